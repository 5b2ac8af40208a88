"""One request in flight: its slot of the KV caches, its tokens, strategy, sampling state,
stop matcher, constraint, text and statistics.

The request runs as a generator: the prompt's prefill in chunks, then round after round
(`svip_local.round`). Wherever it needs a decode it queues rows in a context's batch and
yields that context; the scheduler (`svip_local.scheduler`) runs every request's steps side
by side, so their decodes share batches. Events go to the request's own queue, which
`Engine.generate` reads in the caller's thread. After each round it yields None: it pauses
until its reader has taken that round's events (alone) or all but the last round's (beside
others: a reader a moment late must not split the shared batch), so a reader that stops
reading stops its request (and no other), and alone the caches hold what the last event read
says.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Sequence as Seq
from time import perf_counter

import numpy as np

from svip_local.events import Done, Event, GenerationStats, Round, Token
from svip_local.grammar import GrammarState
from svip_local.native import Context, Model, Outputs, TextStream
from svip_local.policies import Strategy
from svip_local.round import Speculator, speculative_round
from svip_local.sampling import SamplingParams
from svip_local.stops import StopMatcher
from svip_local.transcript import Regions, Transcript

SIDE_TOKENS = 8192  # the most tokens of earlier text a slot keeps searchable for copies
END = object()  # the last item of a request's event queue


class Clock:
    """A request's own time: its share of the work done for it (its Python, the batches it
    joined), what its strategy learns costs from. Alone, it is the wall clock."""

    __slots__ = ("elapsed",)

    def __init__(self) -> None:
        self.elapsed = 0.0

    def now(self) -> float:
        return self.elapsed


class Sequence:
    """One generation, from admission to `Done`. Built in the caller's thread with checked
    arguments; stepped only by the scheduler's thread."""

    def __init__(self, ids: list[int], regions: Regions, max_tokens: int,
                 sampling: SamplingParams, strategy: Strategy, stops: Seq[str],
                 ignore_eos: bool, cancel: threading.Event | None,
                 grammar: GrammarState | None, model: Model, n_ctx: int) -> None:
        self.ids, self.regions, self.sampling = ids, regions, sampling
        self.strategy, self.ignore_eos, self.grammar, self.model = (
            strategy, ignore_eos, grammar, model)
        self.cancel = cancel or threading.Event()
        self.events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.finished = threading.Event()  # set once its slot is consistent and Done is out
        self.clock = Clock()
        self.stats = GenerationStats(policy=strategy.describe(), prompt_tokens=len(ids),
                                     constrained=grammar is not None)
        self.rng = np.random.default_rng(sampling.seed)
        self.stream, self.stopper = TextStream(model), StopMatcher(stops)
        self.budget = min(max_tokens, n_ctx - len(ids))
        self.finish = "length" if self.budget == max_tokens else "context"
        self.out: list[int] = []
        self.texts: list[str] = []
        self.slot = -1
        self.filling = True  # still prefilling: its rows go in after the rounds' rows
        self.submitted = perf_counter()
        self.started = 0.0
        self.waiting_on: Context | None = None  # the context whose batch it waits for
        self.paused = False  # after a round, until its reader took the round's events
        self.rounds_out = self.rounds_read = 0
        self.read_round = False  # the last event read ended a round
        self.on_read: Callable[[], None] = lambda: None  # tells the scheduler it may go on
        self.reader: int | None = 0  # the thread that reads its events (None: any)
        self._steps: Generator[Context | None, None, None] | None = None

    def start(self, speculator: Speculator, side: list[int]) -> None:
        """Admit it to `speculator`'s slot, whose earlier text (`side`) it may copy from."""
        self.slot, self.started = speculator.slot, perf_counter()
        self.stats.queued_s = self.started - self.submitted
        speculator.clock = self.clock.now
        self._steps = self._run(speculator, side)

    def ready(self, lag: int) -> bool:
        """Whether it may run now: not waiting for a batch, and its reader at most `lag`
        rounds behind (or it was cancelled)."""
        return self.waiting_on is None and (
            not self.paused or self.rounds_read >= self.rounds_out - lag
            or self.cancel.is_set())

    def resume(self) -> bool:
        """Run it to its next decode (then `waiting_on` says where) or the end of its round
        (`paused`); False once it ended."""
        assert self._steps is not None
        t0 = perf_counter()
        try:
            self.waiting_on = self._steps.send(None)
            self.paused = self.waiting_on is None
            return True
        except StopIteration:
            self.waiting_on = None
            return False
        finally:
            self.clock.elapsed += perf_counter() - t0

    def emit(self, item: object) -> None:
        self.events.put(item)

    def close_steps(self) -> None:
        """Stop its steps where they are (their `finally` runs)."""
        if self._steps is not None:
            self._steps.close()

    def _run(self, spec: Speculator, side: list[int]
             ) -> Generator[Context | None, None, None]:
        """Prefill, then rounds until the budget, an end token, a stop or a cancel."""
        target, draft, slot, stats = spec.target, spec.draft, spec.slot, self.stats
        ids = self.ids
        # Bring the slot to ids[:-1], reusing its longest cached prefix; what it held past
        # that stays searchable for copies. The draft catches up lazily in its first step,
        # but never on stale tokens.
        cached = list(target.slot_tokens(slot))
        keep = target.keep_prefix(ids, len(ids) - 1, slot)
        side[:] = [*side, *cached[keep:]][-SIDE_TOKENS:]
        if draft is not None:
            draft.keep_prefix(ids, len(ids) - 1, slot)
        todo, done = ids[keep:-1], 0
        while done < len(todo) and not self.cancel.is_set():
            if target.rows_free == 0:
                yield target
                continue
            n = min(len(todo) - done, target.rows_free)
            target.add_chain(todo[done:done + n], Outputs.NONE, slot)
            done += n
            yield target
        stats.prefill_tokens = done
        stats.prefill_s = perf_counter() - self.started
        self.filling = False
        transcript = Transcript(ids, capacity=target.n_ctx + 1, side=side,
                                regions=self.regions)
        seq, out, grammar = list(ids), self.out, self.grammar
        while self.finish not in ("eos", "stop"):
            if self.cancel.is_set():
                self.finish = "cancelled"
                break
            remaining = self.budget - len(out)
            result = yield from speculative_round(spec, seq, transcript, remaining - 1,
                                                  self.strategy, self.sampling, self.rng,
                                                  remaining, grammar)
            stats.add_round(result)
            stats.batch_rows += spec.batch_rows
            emitted = 0
            for i, tok in enumerate(result.tokens):
                seq.append(tok)
                transcript.append(tok)
                if not self.ignore_eos and self.model.is_eog(tok):
                    self.finish = "eos" if grammar is None else "stop"
                    break
                from_draft = i < result.accepted
                out.append(tok)
                stats.from_draft.append(from_draft)
                piece = self.stopper.push(self.stream.push(tok))
                self.texts.append(piece)
                self.emit(Token(tok, piece, from_draft, stats.rounds))
                emitted += 1
                if self.stopper.hit is not None:
                    self.finish = "stop"
                    break
                if len(out) >= self.budget:
                    break
            else:  # every token emitted: a finished grammar allows only the end
                if grammar is not None and grammar.stopped:
                    self.finish = "stop"
            stats.generated = len(out)
            self.emit(Round(stats.rounds, len(result.proposed), result.accepted,
                            emitted, target.pos_max(slot) + 1,
                            None if draft is None else draft.pos_max(slot) + 1,
                            copied=result.copied, nodes=result.nodes, forced=result.forced,
                            steps=result.draft_steps, catchup=result.catchup))
            self.rounds_out += 1
            if len(out) >= self.budget:
                break
            yield None

    def end(self, error: BaseException | None, save_live: Callable[[], None]) -> None:
        """Its last events: `Done` (or the error), after its slot was made consistent."""
        stats = self.stats
        stats.generated = len(self.out)
        stats.wall_s = perf_counter() - self.started if self.started else 0.0
        if self.grammar is not None:
            stats.mask_s, stats.masks = self.grammar.seconds, self.grammar.masks
        stats.live = self.strategy.report()
        if stats.live is not None:  # what it ran is known now, not when it started
            stats.policy = self.strategy.describe()
            save_live()
        if error is None and self._steps is None:  # cancelled while it waited for a slot
            self.finish = "cancelled"
        if error is not None:
            self.emit(error)
        else:
            if self.stopper.hit is None:
                self.texts.append(self.stopper.push(self.stream.flush()) + self.stopper.flush())
            self.emit(Done("".join(self.texts), tuple(self.out), self.finish, stats))
        self.emit(END)
        self.finished.set()


def events_of(seq: Sequence) -> Event | None:
    """The request's next event (None after the last); an error it ended with is raised."""
    if seq.read_round:  # the reader is back after a round's events: the next may run
        seq.read_round = False
        seq.rounds_read += 1
        seq.on_read()
    item = seq.events.get()
    if item is END:
        return None
    if isinstance(item, BaseException):
        raise item
    seq.read_round = isinstance(item, Round)
    return item  # type: ignore[return-value]
