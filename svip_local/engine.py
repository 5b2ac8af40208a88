"""The speculative engine: a draft and a target llama.cpp context sharing one loop.

Each round the draft proposes tokens one decode at a time while the policy lets it, the target
scores `[last accepted token] + draft` in ONE batched decode, the longest agreeing prefix plus
one target token is kept, and the rejected tail leaves both KV caches through sequence removal.
Both contexts keep the exact list of tokens in their cache, so a new prompt that shares a
prefix with the last one (the next chat turn, a regenerated reply) decodes only what is new.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from time import perf_counter

import numpy as np

from svip_local.compat import check_pair
from svip_local.errors import InvalidRequestError, PromptTooLongError
from svip_local.events import Done, Event, GenerationStats, Round, Token
from svip_local.native import Context, Model, Outputs, TextStream
from svip_local.policies import DraftPolicy, StepStats, Verdict, entropy_and_top_prob
from svip_local.sampling import Probs, SamplingParams, distribution, sample, verify_sampled
from svip_local.stops import StopMatcher

log = logging.getLogger(__name__)

GREEDY = SamplingParams()


@dataclass(frozen=True)
class EngineConfig:
    """How both models are loaded and run. GPU offload is per model: a laptop may fit the
    draft fully and the target partly."""

    n_ctx: int = 4096
    n_batch: int = 512
    n_gpu_layers: int = -1  # -1: all layers (no effect on a CPU-only build)
    draft_n_gpu_layers: int | None = None  # None: same as the target
    n_threads: int | None = None
    flash_attn: bool | None = None  # None: llama.cpp decides
    max_draft: int = 16
    policy: str = "auto"


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common prefix of a and b, at most `limit`."""
    n = min(len(a), len(b), limit)
    if list(a[:n]) == list(b[:n]):
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


class Engine:
    """Target (and optional draft) GGUF, loaded once; `generate` streams events.

    One generation runs at a time. `cancel()` may be called from any thread: the running
    generation stops at the next round and both KV caches stay consistent.
    """

    def __init__(self, target: str | Path, draft: str | Path | None = None, *,
                 config: EngineConfig | None = None, **overrides: object) -> None:
        self.config = replace(config or EngineConfig(), **overrides)  # type: ignore[arg-type]
        cfg = self.config
        if cfg.n_ctx < 16:
            raise InvalidRequestError(f"n_ctx must be at least 16, got {cfg.n_ctx}")
        if cfg.max_draft < 1:
            raise InvalidRequestError(f"max_draft must be >= 1, got {cfg.max_draft}")
        with ExitStack() as stack:
            # Anything loaded before a failure (bad draft, incompatible pair) is freed here.
            self.target_model = Model(target, n_gpu_layers=cfg.n_gpu_layers)
            stack.callback(self.target_model.close)
            self.draft_model: Model | None = None
            if draft is not None:
                dngl = cfg.n_gpu_layers if cfg.draft_n_gpu_layers is None \
                    else cfg.draft_n_gpu_layers
                self.draft_model = Model(draft, n_gpu_layers=dngl)
                stack.callback(self.draft_model.close)
                check_pair(self.target_model, self.draft_model)
            ctx_args = dict(n_ctx=cfg.n_ctx, n_batch=cfg.n_batch, n_threads=cfg.n_threads,
                            flash_attn=cfg.flash_attn)
            self.target_ctx = Context(self.target_model, **ctx_args)  # type: ignore[arg-type]
            self.draft_ctx: Context | None = None
            if self.draft_model is not None:
                self.draft_ctx = Context(self.draft_model, **ctx_args)  # type: ignore[arg-type]
            stack.pop_all()
        self.n_ctx = self.target_ctx.n_ctx
        self.n_vocab = self.target_model.n_vocab if self.draft_model is None else min(
            self.target_model.n_vocab, self.draft_model.n_vocab)
        self._scratch = np.empty(self.n_vocab, dtype=np.float32)
        self._cancel = threading.Event()
        self._busy = threading.Lock()
        self.policy = self.make_policy(cfg.policy)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        # Models free their contexts first (see native.Context).
        if self.draft_model is not None:
            self.draft_model.close()
        self.target_model.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Empty both KV caches, so the next prompt pays its whole prefill (benchmarks)."""
        self.target_ctx.clear()
        if self.draft_ctx is not None:
            self.draft_ctx.clear()

    def cancel(self) -> None:
        """Stop the running generation at its next round (thread-safe)."""
        self._cancel.set()

    # -- policies and prompts ------------------------------------------------------------

    def make_policy(self, spec: str | DraftPolicy) -> DraftPolicy:
        """A policy object from its spec; `auto` consults this machine's calibration."""
        from svip_local.autopolicy import resolve_policy

        if isinstance(spec, DraftPolicy):
            return spec
        return resolve_policy(spec, self)

    def tokenize(self, text: str, *, add_special: bool = True,
                 parse_special: bool = False) -> list[int]:
        return self.target_model.tokenize(text, add_special=add_special,
                                          parse_special=parse_special)

    def kv_lengths(self) -> tuple[int, int | None]:
        """Tokens in each KV cache as llama.cpp reports them (target, draft or None)."""
        d = None if self.draft_ctx is None else self.draft_ctx.pos_max() + 1
        return self.target_ctx.pos_max() + 1, d

    # -- generation ----------------------------------------------------------------------

    def generate(self, prompt: str | Sequence[int], *, max_tokens: int = 256,
                 sampling: SamplingParams | None = None,
                 policy: str | DraftPolicy | None = None, stop: Sequence[str] = (),
                 ignore_eos: bool = False, cancel: threading.Event | None = None,
                 parse_special: bool = False) -> Iterator[Event]:
        """Stream `Token` and `Round` events, then one `Done` with the statistics.

        `prompt` is raw text (tokenized with the model's own BOS rule) or token ids. Bad
        arguments raise here, before any work; a consumer that stops iterating early leaves
        the engine consistent and reusable.
        """
        if max_tokens <= 0:
            raise InvalidRequestError(f"max_tokens must be positive, got {max_tokens}")
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
        pol = self.policy if policy is None else self.make_policy(policy)
        if self.draft_ctx is None and pol.round_limit() > 0 and policy is not None:
            raise InvalidRequestError(f"policy {pol.name!r} needs a draft model")
        return self._generate(ids, max_tokens, sampling or GREEDY, pol, stop, ignore_eos, cancel)

    def complete(self, prompt: str | Sequence[int], **kwargs: object) -> Done:
        """Run `generate` to the end and return its `Done` event."""
        done = None
        for event in self.generate(prompt, **kwargs):  # type: ignore[arg-type]
            if isinstance(event, Done):
                done = event
        assert done is not None  # _generate always ends with Done
        return done

    def _generate(self, ids: list[int], max_tokens: int, sampling: SamplingParams,
                  policy: DraftPolicy, stops: Sequence[str], ignore_eos: bool,
                  cancel: threading.Event | None) -> Iterator[Event]:
        if not self._busy.acquire(blocking=False):
            raise InvalidRequestError("the engine is already generating; one at a time")
        self._cancel.clear()
        policy.start(sampling)
        stats = GenerationStats(policy=policy.describe(), prompt_tokens=len(ids))
        rng = np.random.default_rng(sampling.seed)
        stream, stopper = TextStream(self.target_model), StopMatcher(stops)
        seq, out, texts = list(ids), [], []
        budget = min(max_tokens, self.n_ctx - len(ids))
        finish = "length" if budget == max_tokens else "context"
        use_draft = self.draft_ctx is not None
        start = perf_counter()
        try:
            stats.prefill_tokens = self._prefill(ids, cancel)
            stats.prefill_s = perf_counter() - start
            while finish not in ("eos", "stop"):
                if self._cancel.is_set() or (cancel is not None and cancel.is_set()):
                    finish = "cancelled"
                    break
                room = min(self.config.max_draft, budget - len(out) - 1)
                t0 = perf_counter()
                drafts = policy.propose(seq, room) if room > 0 else []
                qs: list[Probs | None]
                if drafts:
                    stats.lookup_rounds += 1
                    qs = [None] * len(drafts)  # a copy has no draft distribution
                else:
                    cap = min(policy.round_limit(), room) if use_draft else 0
                    drafts, qs = self._draft(seq, cap, policy, sampling, rng)
                t1 = perf_counter()
                n_acc, nxt = self._verify(seq, drafts, qs, sampling, rng)
                stats.draft_s += t1 - t0
                stats.verify_s += perf_counter() - t1
                policy.observe(len(drafts), n_acc)
                stats.rounds += 1
                stats.drafted += len(drafts)
                stats.accepted += n_acc
                stats.draft_lengths.append(len(drafts))
                stats.accepted_lengths.append(n_acc)
                emitted = 0
                for tok, from_draft in [(t, True) for t in drafts[:n_acc]] + [(nxt, False)]:
                    seq.append(tok)
                    if not ignore_eos and self.target_model.is_eog(tok):
                        finish = "eos"
                        break
                    out.append(tok)
                    stats.from_draft.append(from_draft)
                    emitted += 1
                    piece = stopper.push(stream.push(tok))
                    texts.append(piece)
                    yield Token(tok, piece, from_draft, stats.rounds)
                    if stopper.hit is not None:
                        finish = "stop"
                        break
                    if len(out) >= budget:
                        break
                stats.generated = len(out)
                yield Round(stats.rounds, len(drafts), n_acc, emitted, *self.kv_lengths())
                if len(out) >= budget:
                    break
        finally:
            self.target_ctx.ensure_consistent()
            if self.draft_ctx is not None:
                self.draft_ctx.ensure_consistent()
            stats.generated = len(out)
            stats.wall_s = perf_counter() - start
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
        keep = common_prefix(ctx.tokens, ids, len(ids) - 1)
        ctx.truncate(keep)
        todo = ids[keep:-1]
        for i in range(0, len(todo), ctx.n_batch):
            if self._cancel.is_set() or (cancel is not None and cancel.is_set()):
                break
            ctx.decode(todo[i:i + ctx.n_batch], Outputs.NONE)
        return len(ctx.tokens) - keep

    def _draft(self, seq: list[int], cap: int, policy: DraftPolicy, sampling: SamplingParams,
               rng: np.random.Generator) -> tuple[list[int], list[Probs | None]]:
        """Propose up to `cap` tokens after `seq`, asking the policy after each one."""
        if cap <= 0 or self.draft_ctx is None:
            return [], []
        ctx, model = self.draft_ctx, self.draft_model
        assert model is not None
        keep = common_prefix(ctx.tokens, seq, len(seq) - 1)
        ctx.truncate(keep)
        # Usually one token (the last accepted); two after an all-accepted round, because the
        # last draft token was never decoded; the whole catch-up after a target-only stretch.
        ctx.decode(seq[keep:], Outputs.LAST)
        drafts: list[int] = []
        qs: list[Probs | None] = []
        nan = math.nan
        for n in range(1, cap + 1):
            logits = ctx.logits()[: self.n_vocab]
            if sampling.greedy:
                tok = int(logits.argmax())
            else:
                q = distribution(logits, sampling)
                tok = sample(q, rng)
            if policy.wants_entropy or policy.wants_top_prob:
                h, p1 = entropy_and_top_prob(logits, self._scratch)
            else:
                h = p1 = nan
            verdict = policy.judge(StepStats(n, h, p1))
            if verdict is Verdict.DROP:
                break
            drafts.append(tok)
            if not sampling.greedy:
                qs.append(q)
            if verdict is Verdict.STOP or n == cap or model.is_eog(tok):
                break
            ctx.decode([tok], Outputs.LAST)
        return drafts, qs

    def _verify(self, seq: list[int], drafts: list[int], qs: list[Probs | None],
                sampling: SamplingParams, rng: np.random.Generator) -> tuple[int, int]:
        """Score `[seq[-1]] + drafts` in one target decode; return (accepted, next token).

        Greedy: accept while each draft token is the target's argmax; the next token is the
        target's argmax at the first mismatch (or after the last draft: the bonus token).
        Sampling: row i accepts d_i with probability min(1, p_i(d_i)/q_i(d_i)); the first
        rejection draws from norm(max(0, p_i - q_i)); if all pass, the bonus comes from p_k.
        A copied token (q_i None) is a certain proposal: q_i is all mass on d_i.
        """
        ctx = self.target_ctx
        ctx.decode([seq[-1], *drafts], Outputs.ALL)
        accepted, nxt = len(drafts), -1
        for i, d in enumerate(drafts):
            row = ctx.logits(i)[: self.n_vocab]
            if sampling.greedy:
                best = int(row.argmax())
                if best != d:
                    accepted, nxt = i, best
                    break
            else:
                fix = verify_sampled(distribution(row, sampling), qs[i], d, rng)
                if fix is not None:
                    accepted, nxt = i, fix
                    break
        if nxt < 0:
            last = ctx.logits(len(drafts))[: self.n_vocab]
            nxt = int(last.argmax()) if sampling.greedy else sample(
                distribution(last, sampling), rng)
        # Keep seq + accepted drafts in both caches; the new token is decoded next round. The
        # draft never decoded its last proposal, so after an all-accepted round it is one short.
        ctx.truncate(len(seq) + accepted)
        if self.draft_ctx is not None:
            self.draft_ctx.truncate(len(seq) + accepted)
        return accepted, nxt
