"""The engine's generation slots, a bounded queue in front of them, cancellation and shutdown.

Generations run in worker threads, one per running job (at most `slots`, started as needed),
because llama.cpp calls block for milliseconds to seconds: on the event loop they would freeze
every other connection (health checks, the 503s of a full queue, disconnect detection). The
engine batches the running generations together; the worker hands it no more jobs than it has
slots, so the jobs beyond them wait here, where /health counts them and a full queue is a 503.
A slot is freed by its thread when the engine has really finished, not by the request: a
disconnected client only *asks* for cancellation (the engine stops at its next round), and the
next job must not reach the engine before then. That also keeps request-side cleanup
synchronous (`Job.cancel`), which matters because it runs inside an already-cancelled asyncio
task, where nothing can be awaited.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

from svip_local import Event, Round

log = logging.getLogger(__name__)

Generation = Callable[[threading.Event], Iterator[Event]]
"""Starts a generation in a worker thread; it must stop soon after the event is set."""

_END = object()


class ServerBusyError(Exception):
    """Every slot is taken and the queue is full: the client should retry later (503)."""


class ServerShuttingDownError(Exception):
    """The server began to shut down before this job started, or while it ran (503)."""


class Job:
    """One queued generation: produced in a worker thread, consumed on the event loop."""

    def __init__(self, generation: Generation, loop: asyncio.AbstractEventLoop) -> None:
        self.cancelled = threading.Event()
        self.shut_down = False  # cancelled because the server is shutting down
        self._generation = generation
        self._loop = loop
        self._items: asyncio.Queue[object] = asyncio.Queue()
        self._ended = False
        self._submitted = time.perf_counter()
        self.queued_s = 0.0  # seconds it waited here for a slot (the engine's own wait aside)

    def cancel(self) -> None:
        """Stop the generation, or skip it if it has not started (any thread, never blocks)."""
        self.cancelled.set()

    async def next_event(self) -> Event | None:
        """The next Token, Notice or Done; None once the generation has ended. An error the
        generation raised is raised here (`ServerShuttingDownError` for a job the shutdown
        skipped)."""
        if self._ended:
            return None
        item = await self._items.get()
        if item is _END:
            self._ended = True
            return None
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def execute(self, release: Callable[[], None] = lambda: None) -> None:
        """Run the generation to its end (worker thread only), then `release` its slot before
        the end reaches the client: a client that has its answer sees the slot free."""
        self.queued_s = time.perf_counter() - self._submitted
        try:
            if not self.cancelled.is_set():
                for event in self._generation(self.cancelled):
                    if not isinstance(event, Round):  # rounds are not part of the API
                        self._emit(event)
            elif self.shut_down:
                self._emit(ServerShuttingDownError("the server is shutting down"))
        except Exception as exc:
            self._emit(exc)
        finally:
            release()
            self._emit(_END)

    def _emit(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody will read this job any more
            self.cancelled.set()


class GenerationWorker:
    """Runs up to `slots` jobs at once, in submission order, with at most `max_queue` more
    waiting."""

    def __init__(self, max_queue: int, slots: int = 1) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.max_queue = max_queue
        self.slots = slots
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not finished: the running jobs plus the waiting ones
        self._running: set[Job] = set()
        self._threads: list[threading.Thread] = []
        self._closing = False  # shutdown() was called: refuse new jobs, cancel the rest

    def submit(self, generation: Generation) -> Job:
        """Queue a generation (call on the event loop that will consume it)."""
        job = Job(generation, asyncio.get_running_loop())
        with self._lock:
            if self._closing:
                raise ServerShuttingDownError("the server is shutting down; retry later")
            if self._pending >= self.slots + self.max_queue:
                raise ServerBusyError(
                    f"the server is busy: {self.slots} generation(s) are running and "
                    f"{self.max_queue} are waiting; retry later")
            self._pending += 1
            if len(self._threads) < min(self.slots, self._pending):
                thread = threading.Thread(target=self._run, daemon=True,
                                          name=f"svip-generation-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
        self._jobs.put(job)
        return job

    def load(self) -> tuple[int, int]:
        """(generations running, jobs waiting), for /health."""
        with self._lock:
            running = len(self._running)
            return running, self._pending - running

    def shutdown(self) -> None:
        """Refuse new jobs and cancel every running and waiting one, whose clients then get
        their answers' ends (any thread, never blocks: a server calls it as it begins to shut
        down, so that no response outlives the graceful-shutdown timeout)."""
        with self._lock:
            self._closing = True
            for job in self._running:
                job.shut_down = True
                job.cancel()

    def stop(self, timeout: float = 10.0) -> None:
        """`shutdown`, then end the threads (server shutdown); the worker can start again."""
        self.shutdown()
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)  # after every waiting job: those are skipped, not lost
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._closing = False

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            with self._lock:
                self._running.add(job)
                if self._closing:
                    job.shut_down = True
                    job.cancel()
            job.execute(release=functools.partial(self._release, job))

    def _release(self, job: Job) -> None:
        with self._lock:
            self._running.discard(job)
            self._pending -= 1
