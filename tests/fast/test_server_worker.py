"""The generation worker alone: one job at a time in order (or `slots` at once), a bounded
queue, errors, cancellation and shutdown delivered across the thread boundary."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from svip_local.events import Done, Event, GenerationStats, Notice, Token
from svip_local.server.worker import (
    GenerationWorker,
    Job,
    ServerBusyError,
    ServerShuttingDownError,
)


def done(reason: str = "eos") -> Done:
    return Done("", (), reason, GenerationStats())


async def drain(job: Job) -> list[Event]:
    events = []
    while (event := await job.next_event()) is not None:
        events.append(event)
    return events


def test_jobs_run_one_at_a_time_in_submission_order() -> None:
    log: list[str] = []
    active = threading.Semaphore(1)

    def generation(name: str) -> Callable[[threading.Event], Iterator[Event]]:
        def run(_cancel: threading.Event) -> Iterator[Event]:
            assert active.acquire(blocking=False), "two generations overlapped"
            log.append(f"start {name}")
            time.sleep(0.02)
            log.append(f"end {name}")
            active.release()
            yield done()
        return run

    async def main() -> None:
        worker = GenerationWorker(max_queue=2)
        jobs = [worker.submit(generation(n)) for n in "abc"]
        for job in jobs:
            assert await drain(job) == [done()]
        worker.stop()

    asyncio.run(main())
    assert log == ["start a", "end a", "start b", "end b", "start c", "end c"]


def test_queue_is_bounded_and_frees_up() -> None:
    release = threading.Event()

    def blocking(_cancel: threading.Event) -> Iterator[Event]:
        release.wait(5)
        yield done()

    async def main() -> None:
        worker = GenerationWorker(max_queue=1)
        first, second = worker.submit(blocking), worker.submit(blocking)
        with pytest.raises(ServerBusyError):
            worker.submit(blocking)
        release.set()
        await drain(first)
        await drain(second)
        assert worker.load() == (False, 0)
        assert await drain(worker.submit(blocking)) == [done()]
        worker.stop()

    asyncio.run(main())


def test_errors_and_events_cross_the_thread() -> None:
    def failing(_cancel: threading.Event) -> Iterator[Event]:
        yield Notice("hello")
        yield Token(1, "a", False, 1)
        raise ValueError("boom")

    async def main() -> None:
        worker = GenerationWorker(max_queue=0)
        job = worker.submit(failing)
        assert await job.next_event() == Notice("hello")
        assert await job.next_event() == Token(1, "a", False, 1)
        with pytest.raises(ValueError, match="boom"):
            await job.next_event()
        assert await job.next_event() is None
        worker.stop()

    asyncio.run(main())


def generation_until_cancelled(started: threading.Event
                               ) -> Callable[[threading.Event], Iterator[Event]]:
    """A generation that sets `started`, then waits for its cancel (5 s at most)."""
    def until_cancelled(cancel: threading.Event) -> Iterator[Event]:
        started.set()
        cancel.wait(5)
        yield done("cancelled" if cancel.is_set() else "length")

    return until_cancelled


def test_stop_cancels_the_running_generation() -> None:
    started = threading.Event()
    until_cancelled = generation_until_cancelled(started)

    async def main() -> None:
        worker = GenerationWorker(max_queue=1)
        job = worker.submit(until_cancelled)
        skipped = worker.submit(until_cancelled)
        await asyncio.to_thread(started.wait, 5)
        t0 = time.monotonic()
        await asyncio.to_thread(worker.stop)
        assert time.monotonic() - t0 < 2
        assert await drain(job) == [done("cancelled")]
        assert job.shut_down
        with pytest.raises(ServerShuttingDownError):  # skipped, and told why
            await skipped.next_event()
        assert await drain(skipped) == []

    asyncio.run(main())


def test_slots_run_together_and_bound_the_queue() -> None:
    release = threading.Event()
    running = threading.Semaphore(0)

    def blocking(_cancel: threading.Event) -> Iterator[Event]:
        running.release()
        release.wait(5)
        yield done()

    async def main() -> None:
        worker = GenerationWorker(max_queue=1, slots=3)
        jobs = [worker.submit(blocking) for _ in range(4)]
        for _ in range(3):
            assert await asyncio.to_thread(running.acquire, True, 5)
        assert worker.load() == (3, 1)
        with pytest.raises(ServerBusyError):
            worker.submit(blocking)
        release.set()
        for job in jobs:
            assert await drain(job) == [done()]
        assert worker.load() == (0, 0)
        worker.stop()

    asyncio.run(main())


def test_shutdown_cancels_everything_and_refuses_new_jobs() -> None:
    started = threading.Event()
    until_cancelled = generation_until_cancelled(started)

    async def main() -> None:
        worker = GenerationWorker(max_queue=1, slots=1)
        job, queued = worker.submit(until_cancelled), worker.submit(until_cancelled)
        await asyncio.to_thread(started.wait, 5)
        worker.shutdown()  # on the event loop: it must not block
        with pytest.raises(ServerShuttingDownError):
            worker.submit(until_cancelled)
        assert await drain(job) == [done("cancelled")] and job.shut_down
        with pytest.raises(ServerShuttingDownError):
            await queued.next_event()
        await asyncio.to_thread(worker.stop)
        assert await drain(worker.submit(lambda _c: iter([done()]))) == [done()]  # reusable
        worker.stop()

    asyncio.run(main())
