"""The engine: a target (and optional draft) llama.cpp context with a slot per concurrent
request, and `generate`, which streams a reply round by round.

A request is a `sequence.Sequence` (prefill, then rounds, `svip_local.round`, turned into
events: text, stops, statistics); the `scheduler` runs every request in flight side by side,
their decodes in shared batches, in a thread of its own. Each slot keeps the exact list of
tokens in its cache, so a new prompt that shares a prefix with a slot's (the next chat turn, a
regenerated reply) decodes only what is new. What a new prompt drops of the cached tokens
(turns that no longer fit, the previous version of a regenerated reply) stays searchable for
copies (`transcript`). `agenerate` is the same stream for asyncio.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator, Generator, Sequence
from contextlib import ExitStack
from typing import Unpack

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
from svip_local.config import MAX_PARALLEL, EngineConfig, EngineSettings
from svip_local.constraint import Constraint
from svip_local.errors import (
    EngineClosedError,
    InvalidRequestError,
    PromptTooLongError,
)
from svip_local.events import Done, Event
from svip_local.grammar import GrammarState
from svip_local.native import MAX_BRANCHES, Context, Model, grammar_tokenizer
from svip_local.off_loop import iterate_off_loop
from svip_local.policies import (
    DraftPolicy,
    Plan,
    PolicyContext,
    as_plan,
    check_spec,
    parse_policy,
)
from svip_local.policies.live import prior_model
from svip_local.probe import probe_costs
from svip_local.round import Speculator
from svip_local.sampling import SamplingParams
from svip_local.scheduler import Scheduler
from svip_local.sequence import Sequence as Request, events_of
from svip_local.transcript import Regions, check_regions

log = logging.getLogger(__name__)

GREEDY = SamplingParams()
# Ordinary text for the probe's decodes (any real tokens do; cycled to the length needed).
_PROBE_TEXT = ("Speculative decoding drafts a few tokens with a small model and lets the large "
               "model check them all in one batch, so a reply comes faster at no loss. ")
PolicyLike = str | DraftPolicy | Plan
KV_SHARE = 0.25  # the most of this machine's memory the default slots' KV caches may take


def check_max_tokens(max_tokens: int) -> None:
    """The reply's budget, checked where a request arrives (`generate`, `stream_chat`)."""
    if max_tokens <= 0:
        raise InvalidRequestError(f"max_tokens must be positive, got {max_tokens}")


class Engine:
    """Target (and optional draft) GGUF, loaded once; `generate` streams events.

    `settings` are `EngineConfig` fields set over `config` (default: `EngineConfig()`); None
    leaves one unset. `generate` may be called from several threads at once: up to
    `parallel` requests generate together, the others wait for a slot. `cancel()` may be
    called from any thread: every running generation stops at its next round and both KV
    caches stay consistent.
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
            self.parallel = cfg.parallel or default_parallel(self.target_model, self.draft_model,
                                                             cfg.n_ctx)
            # The target verifies token trees: one sequence per branch (native.MAX_BRANCHES)
            # in each slot; a unified cache (one cell pool), which trees need.
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
        if cfg.parallel is None:
            log.info("%d parallel slots of %d tokens (KV caches: %.0f MiB; parallel=N sets "
                     "it)", self.parallel, self.n_ctx, self.parallel * self.n_ctx
                     * kv_bytes(self.target_model, self.draft_model) / 2**20)
        self._native = threading.Lock()  # held while anything is inside llama.cpp
        self._closed = False
        self._scheduler = Scheduler(
            [Speculator(self.target_ctx, self.draft_ctx, self.draft_model, self.n_vocab, s)
             for s in range(self.parallel)], self._native, self.save_live, self.close)

    def _context(self, model: Model, branches: int = 1) -> Context:
        cfg = self.config
        return Context(model, n_ctx=cfg.n_ctx, n_batch=cfg.n_batch, n_threads=cfg.n_threads,
                       flash_attn=cfg.flash_attn, branches=branches, slots=self.parallel)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Free both models. Every request in flight or waiting ends first, at its next
        round (never freed under a decode), with an `EngineClosedError`. Closing twice is
        harmless."""
        self._scheduler.stop(EngineClosedError(
            "the engine was closed while this request ran: load a new one to generate again"))
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
        prefill and copies only from itself (benchmarks). Between generations only."""
        with self._native:
            self._check_open()
            if self._scheduler.load() != (0, 0):
                raise InvalidRequestError("reset() while requests are generating")
            self.target_ctx.clear()
            for side in self._scheduler.sides:
                side.clear()
            if self.draft_ctx is not None:
                self.draft_ctx.clear()

    def cancel(self) -> None:
        """Stop every running and waiting generation at its next round (thread-safe)."""
        self._scheduler.cancel_all()

    def load(self) -> tuple[int, int]:
        """(requests generating, requests waiting for a slot)."""
        return self._scheduler.load()

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

    def kv_lengths(self, slot: int = 0) -> tuple[int, int | None]:
        """Tokens a slot holds in each KV cache as llama.cpp reports them (target, draft or
        None)."""
        with self._native:
            self._check_open()
            d = None if self.draft_ctx is None else self.draft_ctx.pos_max(slot) + 1
            return self.target_ctx.pos_max(slot) + 1, d

    def cached_prompts(self) -> list[list[int]]:
        """Each slot's cached tokens (copies), for `chat.prompt_ids`' reuse of a reply's
        tokens."""
        with self._native:
            self._check_open()
            return [list(self.target_ctx.slot_tokens(s)) for s in range(self.parallel)]

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
        return self._stream(self._request(
            prompt, max_tokens=max_tokens, sampling=sampling, policy=policy, stop=stop,
            ignore_eos=ignore_eos, cancel=cancel, parse_special=parse_special, regions=regions,
            constraint=constraint))

    def _request(self, prompt: str | Sequence[int], *, max_tokens: int = 256,
                 sampling: SamplingParams | None = None,
                 policy: PolicyLike | None = None, stop: Sequence[str] = (),
                 ignore_eos: bool = False, cancel: threading.Event | None = None,
                 parse_special: bool = False, regions: Regions = (),
                 constraint: Constraint | None = None) -> Request:
        """A checked request (`generate`'s arguments): bad ones raise here, before any work."""
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
        return Request(ids, regions, max_tokens, sampling, strategy, stop, ignore_eos, cancel,
                       grammar, self.target_model, self.n_ctx)

    async def agenerate(self, prompt: str | Sequence[int], **kwargs: object
                        ) -> AsyncIterator[Event]:
        """`generate` for asyncio: the same events, the blocking work off the event loop
        (bad arguments raise at the first `anext`). Cancelling the task that iterates it
        cancels the generation."""
        request = self._request(prompt, **kwargs)  # type: ignore[arg-type]

        def cancel() -> None:
            request.cancel.set()
            self._scheduler.wake()

        async for event in iterate_off_loop(self._stream(request), cancel):
            yield event

    def _stream(self, request: Request) -> Generator[Event, None, None]:
        """The request's events as the scheduler produces them; closing this generator
        early cancels the request and returns once its slot is consistent again."""
        self._check_open()
        if request.reader is not None:
            request.reader = threading.get_ident()
        self._scheduler.submit(request)
        try:
            while (event := events_of(request)) is not None:
                yield event
        finally:
            if not request.finished.is_set():
                request.cancel.set()
                self._scheduler.wake()
                request.finished.wait()
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


def kv_bytes(target: Model, draft: Model | None) -> int:
    """Bytes one token takes in the KV caches of both models."""
    return target.kv_bytes_per_token + (draft.kv_bytes_per_token if draft is not None else 0)


def default_parallel(target: Model, draft: Model | None, n_ctx: int) -> int:
    """Slots for requests at once: at most `MAX_PARALLEL`, and their KV caches within
    `KV_SHARE` of this machine's memory."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1
    fits = int(memory * KV_SHARE // max(1, n_ctx * kv_bytes(target, draft)))
    return max(1, min(MAX_PARALLEL, fits))
