"""The engine: a target (and optional draft) llama.cpp context, and the generator that streams
a reply round by round.

The round itself (plan, propose, verify, accept, trim) is `svip_local.round`; here it is
repeated until the budget, an end token or a stop string, and turned into events: text, stops
and statistics. Both contexts keep the exact list of tokens in their cache, so a new prompt
that shares a prefix with the last one (the next chat turn, a regenerated reply) decodes only
what is new. What a new prompt drops of the cached tokens (turns that no longer fit, the
previous version of a regenerated reply) stays searchable for copies (`transcript`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Generator, Sequence
from contextlib import ExitStack
from time import perf_counter
from typing import Unpack

import numpy as np

from svip_local import native
from svip_local.calibration import (
    Calibration,
    Fingerprint,
    PairIdentity,
    fingerprint,
    store as calibration_store,
)
from svip_local.calibration.live import LiveModel
from svip_local.compat import check_pair
from svip_local.config import EngineConfig, EngineSettings
from svip_local.constraint import Constraint
from svip_local.errors import (
    EngineClosedError,
    InvalidRequestError,
    PromptTooLongError,
    RemoteServerError,
)
from svip_local.events import Done, Event, GenerationStats, Round, Token
from svip_local.grammar import GrammarState
from svip_local.native import (
    MAX_BRANCHES,
    Context,
    Model,
    Outputs,
    TextStream,
    grammar_tokenizer,
)
from svip_local.policies import (
    DraftPolicy,
    Plan,
    PolicyContext,
    Strategy,
    as_plan,
    check_spec,
    parse_policy,
)
from svip_local.policies.live import prior_model
from svip_local.probe import probe_costs
from svip_local.round import Speculator
from svip_local.sampling import SamplingParams
from svip_local.stops import StopMatcher
from svip_local.transcript import Regions, Transcript, check_regions

log = logging.getLogger(__name__)

GREEDY = SamplingParams()
# Ordinary text for the probe's decodes (any real tokens do; cycled to the length needed).
_PROBE_TEXT = ("Speculative decoding drafts a few tokens with a small model and lets the large "
               "model check them all in one batch, so a reply comes faster at no loss. ")
SIDE_TOKENS = 8192  # the most tokens of earlier text kept searchable for copies
PolicyLike = str | DraftPolicy | Plan


def check_max_tokens(max_tokens: int) -> None:
    """The reply's budget, checked where a request arrives (`generate`, `stream_chat`)."""
    if max_tokens <= 0:
        raise InvalidRequestError(f"max_tokens must be positive, got {max_tokens}")


class Engine:
    """Target (and optional draft) GGUF, loaded once; `generate` streams events.

    `settings` are `EngineConfig` fields set over `config` (default: `EngineConfig()`); None
    leaves one unset. One generation runs at a time. `cancel()` may be called from any
    thread: the running generation stops at the next round and both KV caches stay
    consistent.
    """

    def __init__(self, target: str | os.PathLike[str],
                 draft: str | os.PathLike[str] | None = None, *,
                 config: EngineConfig | None = None, **settings: Unpack[EngineSettings]
                 ) -> None:
        self.config = cfg = (config or EngineConfig()).with_overrides(**settings)
        # A typo or an out-of-bounds length fails before gigabytes are loaded.
        check_spec(cfg.policy, PolicyContext(max_draft=cfg.max_draft, max_copy=cfg.max_copy,
                                             has_draft=draft is not None))
        with ExitStack() as stack:
            # Anything loaded before a failure (bad draft, incompatible pair) is freed here.
            self.target_model = Model(target, n_gpu_layers=cfg.n_gpu_layers,
                                      rpc_servers=cfg.rpc_servers)
            stack.callback(self.target_model.close)
            self.draft_model: Model | None = None
            if draft is not None:
                self.draft_model = Model(draft, n_gpu_layers=cfg.draft_layers,
                                         rpc_servers=cfg.draft_rpc_servers)
                stack.callback(self.draft_model.close)
                check_pair(self.target_model, self.draft_model)
            # The target verifies token trees: one sequence per branch (native.MAX_BRANCHES).
            self.target_ctx = self._context(self.target_model, MAX_BRANCHES)
            self.draft_ctx: Context | None = None
            if self.draft_model is not None:
                self.draft_ctx = self._context(self.draft_model)
            self.n_vocab = self.target_model.n_vocab if self.draft_model is None else min(
                self.target_model.n_vocab, self.draft_model.n_vocab)
            self._live: LiveModel | None = None
            self.policy = self.make_policy(cfg.policy)  # `auto` may probe the machine here
            stack.pop_all()
        self.n_ctx = self.target_ctx.n_ctx
        if self.n_ctx != cfg.n_ctx:  # llama.cpp pads the context to its own granularity
            log.warning("n_ctx %d became %d: llama.cpp rounds the context up", cfg.n_ctx,
                        self.n_ctx)
        if self.n_ctx > self.target_model.n_ctx_train > 0:
            log.warning("n_ctx %d is longer than %s was trained for (%d tokens): replies past "
                        "that may lose quality", self.n_ctx, self.target_model.path.name,
                        self.target_model.n_ctx_train)
        self._speculator = Speculator(self.target_ctx, self.draft_ctx, self.draft_model,
                                      self.n_vocab)
        self._side: list[int] = []  # tokens earlier prompts held that the cache dropped
        self._cancel = threading.Event()
        self._busy = threading.Lock()  # held by the one generation, suspended or running
        self._native = threading.Lock()  # held while a generation is inside llama.cpp
        self._closed = False

    def _context(self, model: Model, branches: int = 1) -> Context:
        cfg = self.config
        return Context(model, n_ctx=cfg.n_ctx, n_batch=cfg.n_batch, n_threads=cfg.n_threads,
                       flash_attn=cfg.flash_attn, branches=branches)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Free both models. A generation running in another thread is stopped at its next
        round first (never freed under a decode); one left suspended ends as "cancelled"
        when resumed. Closing twice is harmless."""
        self._cancel.set()
        with self._native:
            if self._closed:
                return
            self._closed = True
            # Models free their contexts first (see native.Context).
            if self.draft_model is not None:
                self.draft_model.close()
            self.target_model.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is closed: load a new one to generate again")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Empty both KV caches and forget earlier text, so the next prompt pays its whole
        prefill and copies only from itself (benchmarks)."""
        self._check_open()
        self.target_ctx.clear()
        self._side.clear()
        if self.draft_ctx is not None:
            self.draft_ctx.clear()

    def cancel(self) -> None:
        """Stop the running generation at its next round (thread-safe)."""
        self._cancel.set()

    # -- policies and this machine -------------------------------------------------------

    @property
    def machine(self) -> Fingerprint:
        """What decides this engine's costs: CPU, llama.cpp's GPU, offload, threads."""
        return fingerprint(self.config, gpu=native.gpu_name(),
                           default_threads=native.default_threads())

    @property
    def pair(self) -> PairIdentity:
        """The files this engine runs (a target alone has an empty draft)."""
        if self.draft_model is None:
            t = self.target_model.path
            return PairIdentity(t.name, t.stat().st_size, "", 0)
        return PairIdentity.of(self.target_model.path, self.draft_model.path)

    def calibration(self) -> Calibration | None:
        """This pair's stored calibration on this machine (None without one or a draft)."""
        if self.draft_model is None:
            return None
        return calibration_store.load(self.pair, self.machine)

    def live_model(self) -> LiveModel:
        """What `auto` knows about this machine and pair, learnt as it generates: from the
        estimates an earlier session stored, else the calibration, else a probe of a few
        seconds (`EngineConfig.probe`), else defaults the first rounds correct."""
        if self._live is None:
            self._live = self._start_live()
        return self._live

    def forget_live(self) -> LiveModel:
        """Start `auto`'s estimates again as on a machine with no record of this pair: no
        calibration as prior, no stored estimates (a probe, if `EngineConfig.probe`). What a
        first run gets; benchmarks use it to measure exactly that."""
        self._live = self._start_live(fresh=True)
        return self._live

    def _start_live(self, *, fresh: bool = False) -> LiveModel:
        cal = None if fresh else self.calibration()
        stored = None if fresh else calibration_store.load_live(self.pair, self.machine, cal)
        if stored is not None:
            return stored
        if cal is not None or not self.config.probe:
            return prior_model(cal)
        log.info("timing this machine for `auto` (a few seconds, once per pair and machine; "
                 "probe=False skips it)")
        tokens = self.target_model.tokenize(_PROBE_TEXT, add_special=False)
        costs = probe_costs(self.target_ctx, self.draft_ctx, tokens, self.n_vocab,
                            self.config.max_copy + 1)
        return LiveModel.start(costs, "probe")

    def save_live(self) -> None:
        """Store what `auto` learnt (atomically), so the next session starts warm. A failure
        (full disk, read-only cache) is reported and costs only that warm start."""
        if self._live is None:
            return
        try:
            calibration_store.save_live(self.pair, self.machine, self._live)
        except OSError as exc:
            log.warning("could not store auto's live estimates (%s): the next session "
                        "starts from the calibration or a probe again", exc)

    def make_policy(self, spec: PolicyLike) -> Plan:
        """The plan a spec names for this engine (`auto`, `calibrated` and `svip-cost` read
        this machine's calibration; `auto` learns live); a policy object or plan is used as
        it is."""
        if not isinstance(spec, str):
            return as_plan(spec)
        cfg = self.config
        return parse_policy(spec, PolicyContext(
            max_draft=cfg.max_draft, max_copy=cfg.max_copy,
            has_draft=self.draft_model is not None, calibration=self.calibration,
            live=self.live_model))

    # -- prompts ---------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True,
                 parse_special: bool = False) -> list[int]:
        self._check_open()
        return self.target_model.tokenize(text, add_special=add_special,
                                          parse_special=parse_special)

    def kv_lengths(self) -> tuple[int, int | None]:
        """Tokens in each KV cache as llama.cpp reports them (target, draft or None)."""
        d = None if self.draft_ctx is None else self.draft_ctx.pos_max() + 1
        return self.target_ctx.pos_max() + 1, d

    # -- generation ----------------------------------------------------------------------

    def generate(self, prompt: str | Sequence[int], *, max_tokens: int = 256,
                 sampling: SamplingParams | None = None,
                 policy: PolicyLike | None = None, stop: Sequence[str] = (),
                 ignore_eos: bool = False, cancel: threading.Event | None = None,
                 parse_special: bool = False, regions: Regions = (),
                 constraint: Constraint | None = None) -> Generator[Event, None, None]:
        """Stream `Token` and `Round` events, then one `Done` with the statistics.

        `prompt` is raw text (tokenized with the model's own BOS rule) or token ids. Bad
        arguments raise here, before any work; a consumer that stops iterating early leaves
        the engine consistent and reusable. `regions`: where each chat message starts in
        the prompt's ids and its role (`stream_chat` passes them), which tells copies from
        the user's text from copies of an earlier reply. `constraint`: what the output must
        match; it is the target's own output under that constraint, and ends with "stop"
        when the constraint is complete. Stop strings are refused with a constraint (one
        could cut its output short of valid), except a lazy one (tool calls).
        """
        self._check_open()
        check_max_tokens(max_tokens)
        ids = self.tokenize(prompt, parse_special=parse_special) if isinstance(prompt, str) \
            else [int(t) for t in prompt]
        if not ids:
            raise InvalidRequestError("the prompt is empty")
        bad = [t for t in ids if not 0 <= t < self.target_model.n_vocab]
        if bad:
            raise InvalidRequestError(f"token ids out of vocabulary range: {bad[:5]}")
        if len(ids) >= self.n_ctx:
            raise PromptTooLongError(
                f"the prompt has {len(ids)} tokens but the context holds {self.n_ctx} "
                f"(and needs room for at least one new token); shorten it or raise n_ctx")
        try:
            check_regions(regions, len(ids))
        except ValueError as exc:
            raise InvalidRequestError(f"bad message regions: {exc}") from exc
        sampling = sampling or GREEDY
        plan = self.policy if policy is None else self.make_policy(policy)
        strategy = plan.for_sampling(sampling)
        if self.draft_ctx is None and strategy.needs_draft and policy is not None:
            raise InvalidRequestError(f"policy {strategy.name!r} needs a draft model")
        grammar = None if constraint is None else self._grammar(constraint, stop, ignore_eos)
        if grammar is not None:
            strategy = strategy.under_constraint()
        return self._generate(ids, regions, max_tokens, sampling, strategy, stop,
                              ignore_eos, cancel, grammar)

    def _grammar(self, constraint: Constraint, stop: Sequence[str], ignore_eos: bool
                 ) -> GrammarState:
        """The constraint compiled for this request (the model's tokenizer is made once)."""
        if stop and not constraint.lazy:
            raise InvalidRequestError(
                f"stop strings cannot be combined with a {constraint.kind} constraint: a stop "
                "inside the output would cut it short of valid, and the constraint ends the "
                "generation itself")
        if ignore_eos:
            raise InvalidRequestError("ignore_eos cannot be combined with a constraint: the "
                                      "constraint ends the generation where it is complete")
        with self._native:
            self._check_open()
            tokenizer = grammar_tokenizer(self.target_model)
        return GrammarState(constraint, tokenizer, self.n_vocab)

    def complete(self, prompt: str | Sequence[int], **kwargs: object) -> Done:
        """Run `generate` to the end and return its `Done` event."""
        done = None
        for event in self.generate(prompt, **kwargs):  # type: ignore[arg-type]
            if isinstance(event, Done):
                done = event
        assert done is not None  # _generate always ends with Done
        return done

    def _generate(self, ids: list[int], regions: Regions, max_tokens: int,
                  sampling: SamplingParams, strategy: Strategy, stops: Sequence[str],
                  ignore_eos: bool, cancel: threading.Event | None,
                  grammar: GrammarState | None) -> Generator[Event, None, None]:
        if not self._busy.acquire(blocking=False):
            raise InvalidRequestError(
                "the engine is already generating; one generation at a time. A generator that "
                "was started and not run to its end holds the engine until it is closed: "
                "iterate it to the end or call its close()")
        self._cancel.clear()
        stats = GenerationStats(policy=strategy.describe(), prompt_tokens=len(ids),
                                constrained=grammar is not None)
        rng = np.random.default_rng(sampling.seed)
        stream, stopper = TextStream(self.target_model), StopMatcher(stops)
        seq, out, texts = list(ids), list[int](), list[str]()
        budget = min(max_tokens, self.n_ctx - len(ids))
        finish = "length" if budget == max_tokens else "context"
        start = perf_counter()
        batch: list[Event] = []  # one round's events, reused
        try:
            with self._native:
                self._check_open()
                stats.prefill_tokens = self._prefill(ids, cancel)
            # Both hold the reply as it grows: the list for the caches, the transcript (after
            # the earlier text this prompt lacks) for copies.
            transcript = Transcript(ids, capacity=self.n_ctx + 1, side=self._side,
                                    regions=regions)
            stats.prefill_s = perf_counter() - start
            while finish not in ("eos", "stop"):
                if self._cancel.is_set() or (cancel is not None and cancel.is_set()):
                    finish = "cancelled"
                    break
                remaining = budget - len(out)
                batch.clear()
                # Everything that calls llama.cpp happens under the lock, which is free while
                # the events are yielded: close() from another thread waits one round at most.
                with self._native:
                    self._check_open()
                    result = self._speculator.round(seq, transcript, remaining - 1, strategy,
                                                    sampling, rng, remaining, grammar)
                    stats.add_round(result)
                    for i, tok in enumerate(result.tokens):
                        seq.append(tok)
                        transcript.append(tok)
                        if not ignore_eos and self.target_model.is_eog(tok):
                            finish = "eos" if grammar is None else "stop"
                            break
                        from_draft = i < result.accepted
                        out.append(tok)
                        stats.from_draft.append(from_draft)
                        piece = stopper.push(stream.push(tok))
                        texts.append(piece)
                        batch.append(Token(tok, piece, from_draft, stats.rounds))
                        if stopper.hit is not None:
                            finish = "stop"
                            break
                        if len(out) >= budget:
                            break
                    else:  # every token emitted: a finished grammar allows only the end
                        if grammar is not None and grammar.stopped:
                            finish = "stop"
                    stats.generated = len(out)
                    batch.append(Round(stats.rounds, len(result.proposed), result.accepted,
                                       len(batch), *self.kv_lengths(), copied=result.copied,
                                       nodes=result.nodes, forced=result.forced,
                                       steps=result.draft_steps, catchup=result.catchup))
                yield from batch
                if len(out) >= budget:
                    break
        except RemoteServerError:
            # The target's server is gone: this engine cannot decode again, and freeing its
            # remote memory would abort the process (the model leaves it behind).
            self.close()
            raise
        finally:
            with self._native:
                self.target_ctx.ensure_consistent()  # a no-op once closed
                if self.draft_ctx is not None:
                    self.draft_ctx.ensure_consistent()
            stats.generated = len(out)
            stats.wall_s = perf_counter() - start
            if grammar is not None:
                stats.mask_s, stats.masks = grammar.seconds, grammar.masks
            stats.live = strategy.report()
            if stats.live is not None:  # what it ran is known now, not when it started
                stats.policy = strategy.describe()
                self.save_live()
            self._busy.release()
        if stopper.hit is None:
            texts.append(stopper.push(stream.flush()) + stopper.flush())
        yield Done("".join(texts), tuple(out), finish, stats)

    def _prefill(self, ids: list[int], cancel: threading.Event | None) -> int:
        """Bring the target's cache to ids[:-1], reusing the longest cached prefix.

        Returns the number of prompt tokens actually decoded. The draft catches up lazily in
        its first draft step, so a round without drafting never pays for it.
        """
        ctx = self.target_ctx
        cached = list(ctx.tokens)
        keep = ctx.keep_prefix(ids, len(ids) - 1)
        # What the cache held past the shared prefix stays searchable for copies.
        self._side = [*self._side, *cached[keep:]][-SIDE_TOKENS:]
        if self.draft_ctx is not None:  # it catches up lazily, but never on stale tokens
            self.draft_ctx.keep_prefix(ids, len(ids) - 1)
        todo = ids[keep:-1]
        for i in range(0, len(todo), ctx.n_batch):
            if self._cancel.is_set() or (cancel is not None and cancel.is_set()):
                break
            ctx.decode(todo[i:i + ctx.n_batch], Outputs.NONE)
        if todo:
            # Asynchronous backends (GPUs, RPC) are still computing: without the wait, the
            # first round's verification would pay for the prompt, and `auto` learn from it.
            ctx.synchronize()
        return len(ctx.tokens) - keep
