"""The engine's round scheduler: every request in flight advances together, in shared batches.

Each step, every admitted request (`svip_local.sequence.Sequence`) runs to its next decode:
the drafting ones queue a row each in the draft context's batch, which runs once for all of
them, as often as the longest draft needs; then every request's verification (chain or tree,
on its slot's sequence ids) goes into ONE target batch, and the prefill chunks of requests
that just joined fill what is left of it (at most `n_batch` rows), so nobody stalls behind a
long prompt. Requests join between steps when a slot is free (continuous batching) and leave
when they end. The steps run in one thread of the engine's; callers read events from their
request's queue.

A slot is chosen by its cached tokens: the idle slot that shares the longest prefix with the
prompt (ties: the lowest), so a chat's next turn lands where its last one left its cache.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from time import perf_counter

from svip_local.errors import InvalidRequestError, RemoteServerError
from svip_local.native import Context, common_prefix
from svip_local.round import Speculator
from svip_local.sequence import Sequence

log = logging.getLogger(__name__)
CANCEL_POLL_S = 0.05


class Scheduler:
    """Admits requests to slots and steps them; owns the slots' round backends."""

    def __init__(self, speculators: list[Speculator], native: threading.Lock,
                 save_live: Callable[[], None], on_fatal: Callable[[], None]) -> None:
        self.speculators = speculators
        self.target, self.draft = speculators[0].target, speculators[0].draft
        self.sides: list[list[int]] = [[] for _ in speculators]  # each slot's dropped text
        self._native, self._save_live, self._on_fatal = native, save_live, on_fatal
        self._waiting: deque[Sequence] = deque()
        self._active: dict[int, Sequence] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing: BaseException | None = None

    @property
    def slots(self) -> int:
        return len(self.speculators)

    def submit(self, seq: Sequence) -> None:
        """Queue a request; it starts when a slot is free. Refused where every slot is held
        by a request the calling thread reads and has left suspended: it would wait for a
        slot that thread can never free."""
        with self._cond:
            if self._closing is not None:
                raise self._closing
            held = [*self._active.values(), *self._waiting]
            if len(held) >= self.slots and all(s.reader == seq.reader for s in held):
                raise InvalidRequestError(
                    f"all {self.slots} slots are held by generations this thread started and "
                    "has not finished, so this one would wait forever: iterate one to the end "
                    "or call its close() (or load the engine with more parallel slots)")
            self._waiting.append(seq)
            seq.on_read = self.wake
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="svip-scheduler",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def load(self) -> tuple[int, int]:
        """(requests generating, requests waiting for a slot)."""
        with self._cond:
            return len(self._active), len(self._waiting)

    def cancel_all(self) -> None:
        with self._cond:
            for seq in [*self._active.values(), *self._waiting]:
                seq.cancel.set()
            self._cond.notify()

    def wake(self) -> None:
        """A reader took events or cancelled: a paused request may go on."""
        with self._cond:
            self._cond.notify()

    def stop(self, error: BaseException) -> None:
        """End every request with `error` and the thread with them (close)."""
        with self._cond:
            if self._closing is None:
                self._closing = error
            thread = self._thread
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # -- the scheduler's thread -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._can_step() and self._closing is None:
                    # A cancel event set by its owner (not `cancel_all`) wakes nobody: look
                    # again a little later.
                    self._cond.wait(CANCEL_POLL_S)
                closing = self._closing
            with self._native:
                if closing is not None:
                    self._fail_all(closing)
                    return
                self._admit()
                try:
                    self._step()
                    continue
                except RemoteServerError as exc:
                    # The target's server is gone: this engine cannot decode again.
                    self._fail_all(exc)
                    with self._cond:
                        self._closing = exc
            self._on_fatal()  # closes the engine, which takes the lock
            return

    def _can_step(self) -> bool:
        return bool(self._waiting and len(self._active) < self.slots) or any(
            s.ready(self._lag) or s.waiting_on is not None for s in self._active.values()) or any(
            s.cancel.is_set() for s in self._waiting)

    @property
    def _lag(self) -> int:
        """Rounds a request may run ahead of its reader: none alone (its events and caches in
        step, as a lazy generator's), one beside others, so a reader a moment late does not
        split the batch."""
        return 1 if len(self._active) > 1 else 0

    def _admit(self) -> None:
        with self._cond:
            cancelled = [s for s in self._waiting if s.cancel.is_set()]
            for seq in cancelled:
                self._waiting.remove(seq)
        for seq in cancelled:  # never started: no slot to make consistent
            seq.end(None, lambda: None)
        with self._cond:
            while self._waiting and len(self._active) < self.slots:
                seq = self._waiting.popleft()
                slot = self._best_slot(seq.ids)
                self._active[slot] = seq
                seq.start(self.speculators[slot], self.sides[slot])
                seq.stats.slot = slot

    def _best_slot(self, ids: list[int]) -> int:
        free = [s for s in range(self.slots) if s not in self._active]
        return max(free, key=lambda s: (common_prefix(self.target.slot_tokens(s), ids,
                                                      len(ids) - 1), -s))

    def _step(self) -> None:
        active = list(self._active.values())
        self._pump([s for s in active if s.ready(self._lag) and not s.filling])
        draft = self.draft
        while draft is not None and draft.batch_rows:
            self._pump(self._run(draft, active))
        self._pump([s for s in active if s.ready(self._lag) and s.filling])
        if self.target.batch_rows:
            self._run(self.target, active)

    def _run(self, ctx: Context, active: list[Sequence]) -> list[Sequence]:
        """Decode `ctx`'s batch; its time is every participant's. Returns them, ready."""
        joined = [s for s in active if s.waiting_on is ctx]
        t0 = perf_counter()
        try:
            ctx.run_batch()
            ctx.synchronize()  # its own time, not the next read's (GPUs, RPC)
        except RemoteServerError:
            raise
        except Exception as exc:  # a failed decode fails the requests in it, not the others
            for seq in joined:
                self._finish(seq, exc)
            return []
        seconds = perf_counter() - t0
        for seq in joined:
            seq.clock.elapsed += seconds
            seq.waiting_on = None
        return joined

    def _pump(self, seqs: list[Sequence]) -> None:
        """Run each to its next decode (through the end of a round, when its reader lets it
        go on: else a request one step out of phase with the others would never share their
        batches); those that end leave their slot."""
        for seq in seqs:
            while self._active.get(seq.slot) is seq:  # not ended (by a failed batch)
                try:
                    alive = seq.resume()
                except RemoteServerError:
                    raise
                except Exception as exc:
                    self._finish(seq, exc)
                    break
                if not alive:
                    self._finish(seq, None)
                elif seq.waiting_on is not None or not seq.ready(self._lag):
                    break

    def _finish(self, seq: Sequence, error: BaseException | None) -> None:
        seq.close_steps()
        for ctx in (self.target, self.draft):
            if ctx is not None:
                ctx.ensure_consistent(seq.slot)
        with self._cond:
            del self._active[seq.slot]
        seq.end(error, self._save_live)

    def _fail_all(self, error: BaseException) -> None:
        for seq in list(self._active.values()):
            self._finish(seq, error)
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for seq in waiting:
            seq.end(error, lambda: None)
