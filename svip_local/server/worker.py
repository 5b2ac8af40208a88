"""The engine's single generation slot, a bounded queue in front of it, and cancellation.

Generations run in one dedicated thread because llama.cpp calls block for milliseconds to
seconds: on the event loop they would freeze every other connection (health checks, the 503s
of a full queue, disconnect detection). The slot is freed by that thread when the engine has
really finished, not by the request: a disconnected client only *asks* for cancellation (the
engine stops at its next round), and the next job must not reach the engine before then.
That also keeps request-side cleanup synchronous (`Job.cancel`), which matters because it runs
inside an already-cancelled asyncio task, where nothing can be awaited.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Iterator

from svip_local import Event, Round

log = logging.getLogger(__name__)

Generation = Callable[[threading.Event], Iterator[Event]]
"""Starts a generation in the worker thread; it must stop soon after the event is set."""

_END = object()


class ServerBusyError(Exception):
    """The slot is taken and the queue is full: the client should retry later (503)."""


class Job:
    """One queued generation: produced in the worker thread, consumed on the event loop."""

    def __init__(self, generation: Generation, loop: asyncio.AbstractEventLoop) -> None:
        self.cancelled = threading.Event()
        self._generation = generation
        self._loop = loop
        self._items: asyncio.Queue[object] = asyncio.Queue()
        self._ended = False

    def cancel(self) -> None:
        """Stop the generation, or skip it if it has not started (any thread, never blocks)."""
        self.cancelled.set()

    async def next_event(self) -> Event | None:
        """The next Token, Notice or Done; None once the generation has ended. An error the
        generation raised is raised here."""
        if self._ended:
            return None
        item = await self._items.get()
        if item is _END:
            self._ended = True
            return None
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def execute(self) -> None:
        """Run the generation to its end (worker thread only)."""
        try:
            if not self.cancelled.is_set():
                for event in self._generation(self.cancelled):
                    if not isinstance(event, Round):  # rounds are not part of the API
                        self._emit(event)
        except Exception as exc:
            self._emit(exc)
        finally:
            self._emit(_END)

    def _emit(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody will read this job any more
            self.cancelled.set()


class GenerationWorker:
    """Runs jobs one at a time, in submission order, with at most `max_queue` waiting."""

    def __init__(self, max_queue: int) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.max_queue = max_queue
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not finished: the running job plus the waiting ones
        self._current: Job | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def submit(self, generation: Generation) -> Job:
        """Queue a generation (call on the event loop that will consume it)."""
        job = Job(generation, asyncio.get_running_loop())
        with self._lock:
            if self._pending > self.max_queue:
                raise ServerBusyError(
                    f"the server is busy: one generation is running and {self.max_queue} "
                    "are waiting; retry later")
            self._pending += 1
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="svip-generation",
                                                daemon=True)
                self._thread.start()
        self._jobs.put(job)
        return job

    def load(self) -> tuple[bool, int]:
        """(a generation is running, jobs waiting), for /health."""
        with self._lock:
            running = self._current is not None
            return running, self._pending - running

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel the running and waiting jobs and end the thread (server shutdown)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping = True
            if self._current is not None:
                self._current.cancel()
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            with self._lock:
                self._current = job
                if self._stopping:
                    job.cancel()
            try:
                job.execute()
            finally:
                with self._lock:
                    self._current = None
                    self._pending -= 1
