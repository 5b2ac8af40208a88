"""Traces: along the target's own path, what the draft would have proposed.

Per generated position i the trace holds the target's token and, given the TRUE prefix, the
draft's argmax, entropy (nats) and top-1 probability. For greedy decoding that replays any
stopping policy: a round starting at i accepts draft tokens up to the first position where the
draft's argmax differs from the target's token, and every statistic a policy looks at up to
that point is the one recorded here. (After the first mismatch the live draft continues on
its own wrong prefix; the replay uses the true-prefix statistics there. That can change how
many tokens a round drafts, never how many it accepts.)

Token trees replay from the draft's MAX_CANDIDATES best tokens at each position (ids and
probabilities): a CaPE leaf at a depth where the chain was rejected is accepted exactly when it
holds the target's token.

Each position also keeps the draft's last hidden state there (float16), the input of the
learned acceptance head (`calibration.head`, `specdec`).

A sampled trace follows a sampled target-alone run instead and adds, per position, the chance
that speculative sampling accepts a draft token there: sum_x min(p(x), q(x)) for the target's
and the draft's distributions at that temperature; and, for trees, the chance that one of the
draft's next best tokens is accepted once the drafted one was rejected: the residual
norm(max(0, p - q)) summed over the first 1, 2, ... of them. Replays draw acceptances from
those chances (`PromptTrace.realise`): each position independently, along the recorded path.
That is an approximation (a live round continues from the token it accepted, not the recorded
one), and the benchmark measures its error like the greedy replay's. A copied token needs no
draw: the recorded path is itself a draw of the target's distribution, so a copy is accepted
where it spells the path (with the target's probability of the copied token, as rejection
sampling accepts it). For the copy model a sampled trace also keeps that probability,
p(copied token), of the token `auto`'s copier would propose at each position (`copy_prob`).

A trace of a chat prompt keeps where each message starts (`regions`), for copies' evidence.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from svip_local.native import Outputs
from svip_local.policies import entropy_and_top_prob, entropy_scratch
from svip_local.policies.lookup import Copier
from svip_local.sampling import SamplingParams, distribution, residual
from svip_local.transcript import Regions, Transcript
from svip_local.tree import MAX_CANDIDATES, top_candidates

if TYPE_CHECKING:
    from svip_local.calibration.copies import CopyEvidence
    from svip_local.engine import Engine
    from svip_local.events import Done

_ARRAYS = ("target", "draft", "entropy", "top_prob", "draft_eog")
# Absent from older files: the prompt, the draft's best tokens, the sampled chances.
_OPTIONAL = {"prompt_ids": "prompt_length", "top_ids": "top_length",
             "top_probs": "top_length", "accept_prob": "chance_length",
             "alt_accept": "chance_length", "hidden": "hidden_length",
             "copy_prob": "copy_length"}
_EMPTY: dict[str, tuple[tuple[int, ...], Any]] = {
    "prompt_ids": ((0,), np.int32), "top_ids": ((0, MAX_CANDIDATES), np.int32),
    "top_probs": ((0, MAX_CANDIDATES), np.float16), "accept_prob": ((0,), np.float32),
    "alt_accept": ((0, MAX_CANDIDATES - 1), np.float16), "hidden": ((0, 0), np.float16),
    "copy_prob": ((0,), np.float32)}


def _empty(name: str) -> npt.NDArray[Any]:
    shape, dtype = _EMPTY[name]
    return np.empty(shape, dtype)


@dataclass(frozen=True)
class PromptTrace:
    """One prompt's path. When the run ended at an end-of-generation token, that token is the
    last position (the draft may predict it too), so arrays are one longer than `generated`."""

    prompt_id: str
    category: str
    prompt_tokens: int
    budget: int  # most tokens the run could generate: max_tokens, capped by the context
    finish: str  # the live run's finish reason
    target: npt.NDArray[np.int32]
    draft: npt.NDArray[np.int32]
    entropy: npt.NDArray[np.float32]
    top_prob: npt.NDArray[np.float32]
    draft_eog: npt.NDArray[np.bool_]
    # The prompt's tokens, for replaying prompt lookup (empty in traces recorded before it).
    prompt_ids: npt.NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    temperature: float = 0.0
    # Sampled traces only: per position, the chance a draft token there is accepted.
    accept_prob: npt.NDArray[np.float32] = field(
        default_factory=lambda: _empty("accept_prob"))
    # Per position, the draft's MAX_CANDIDATES best tokens, best first, and their
    # probabilities (empty in traces recorded before trees).
    top_ids: npt.NDArray[np.int32] = field(default_factory=lambda: _empty("top_ids"))
    top_probs: npt.NDArray[np.float16] = field(default_factory=lambda: _empty("top_probs"))
    # Sampled only: alt_accept[i, r] = the chance that one of the first r + 1 of the draft's
    # next best tokens (top_ids[i, 1:]) is accepted after the drafted token was rejected.
    alt_accept: npt.NDArray[np.float16] = field(default_factory=lambda: _empty("alt_accept"))
    # Per position, the draft's last hidden state where it predicted that position (empty
    # in traces recorded before the acceptance head).
    hidden: npt.NDArray[np.float16] = field(default_factory=lambda: _empty("hidden"))
    # Sampled only: the target's probability of the token auto's copier proposes at each
    # position (nan where it proposes none; empty in older traces).
    copy_prob: npt.NDArray[np.float32] = field(default_factory=lambda: _empty("copy_prob"))
    # Where each chat message starts in the prompt, and its role (none: a raw prompt).
    regions: tuple[tuple[int, str], ...] = ()

    @property
    def generated(self) -> int:
        return len(self.target) - (1 if self.finish == "eos" else 0)

    @property
    def match(self) -> npt.NDArray[np.bool_]:
        """Where a round's draft token is accepted (greedy: the draft's argmax is the target's
        token)."""
        if len(self.accept_prob):
            raise ValueError("a sampled trace holds acceptance chances: replay a realise()d one")
        return self.target == self.draft

    @property
    def acceptance(self) -> npt.NDArray[np.float64]:
        """The chance a draft token at each position is accepted: 0 or 1 greedily."""
        if len(self.accept_prob):
            return self.accept_prob.astype(np.float64)
        return self.match.astype(np.float64)

    def realise(self, rng: np.random.Generator) -> PromptTrace:
        """One draw of which positions accept a draft token, as a trace the greedy replay runs:
        `draft` equals `target` where accepted, -1 (no token) elsewhere. Copies replay
        against the recorded path as they are (see the module)."""
        if not len(self.accept_prob):
            return self
        n = len(self.accept_prob)
        accepted = rng.random(n) < self.accept_prob
        top_ids = self.top_ids
        if len(self.alt_accept):
            # Where the drafted token was rejected, the target's token stands among the
            # alternatives at the rank from which on they would have caught it (-2 fills
            # the other places: candidates the target never picks).
            u = rng.random(n)
            rank = (u[:, None] >= self.alt_accept.astype(np.float64)).sum(axis=1)
            top_ids = np.full((n, MAX_CANDIDATES), -2, np.int32)
            top_ids[:, 0] = -1
            hit = ~accepted & (rank < MAX_CANDIDATES - 1)
            top_ids[hit, 1 + rank[hit]] = self.target[hit]
        return replace(self, draft=np.where(accepted, self.target, -1).astype(np.int32),
                       accept_prob=_empty("accept_prob"), top_ids=top_ids,
                       alt_accept=_empty("alt_accept"))

    def candidates(self, pos: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float16]]:
        """The draft's best tokens at `pos`, best first, and their probabilities (none in a
        trace without them)."""
        if not len(self.top_ids):
            return self.top_ids[:0, 0], self.top_probs[:0, 0]
        return self.top_ids[pos], self.top_probs[pos]

    def context(self) -> npt.NDArray[np.int32] | None:
        """Prompt and target path as one sequence (the context before position j is its first
        prompt_tokens + j entries), or None when the prompt was not recorded."""
        if len(self.prompt_ids) != self.prompt_tokens:
            return None
        return np.concatenate([self.prompt_ids, self.target])

    def transcript(self) -> Transcript | None:
        """The context as the round's transcript, shown up to the prompt (a replay moves it
        along), or None when the prompt was not recorded."""
        context = self.context()
        return None if context is None else Transcript.of_sequence(
            context, self.prompt_tokens, self.regions)


@dataclass
class TraceSet:
    """Traces of one pair on one prompt set, with what produced them (`meta`: pair, prompts
    file, settings), stored as one compressed .npz."""

    meta: dict[str, Any]
    traces: list[PromptTrace] = field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        index = [{"prompt_id": t.prompt_id, "category": t.category,
                  "prompt_tokens": t.prompt_tokens, "budget": t.budget, "finish": t.finish,
                  "temperature": t.temperature, "length": len(t.target),
                  "prompt_length": len(t.prompt_ids), "top_length": len(t.top_ids),
                  "chance_length": len(t.accept_prob), "hidden_length": len(t.hidden),
                  "copy_length": len(t.copy_prob),
                  "regions": [list(r) for r in t.regions]}
                 for t in self.traces]
        arrays: dict[str, Any] = {name: _joined([getattr(t, name) for t in self.traces])
                                  for name in (*_ARRAYS, *_OPTIONAL)}
        header = json.dumps({"meta": self.meta, "index": index})
        np.savez_compressed(path, header=np.array(header), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TraceSet:
        with np.load(path) as data:
            header = json.loads(str(data["header"]))
            arrays: dict[str, Any] = {name: data[name] for name in _ARRAYS}
            optional = {name: data[name] if name in data else _empty(name)
                        for name in _OPTIONAL}
        traces, start = [], 0
        starts = dict.fromkeys(_OPTIONAL.values(), 0)
        for row in header["index"]:
            end = start + row.pop("length")
            row["regions"] = tuple((int(i), str(role)) for i, role in row.get("regions", ()))
            lengths = {key: row.pop(key, 0) for key in starts}
            parts = {name: optional[name][starts[key]: starts[key] + lengths[key]]
                     for name, key in _OPTIONAL.items()}
            traces.append(PromptTrace(**row, **{k: v[start:end] for k, v in arrays.items()},
                                      **parts))  # type: ignore[arg-type]
            start = end
            for key in starts:
                starts[key] += lengths[key]
        return cls(header["meta"], traces)


def _joined(parts: Sequence[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    """One array of every trace's rows; traces without an optional array add nothing (an
    empty one may not even have the others' width)."""
    held = [a for a in parts if len(a)]
    return np.concatenate(held) if held else np.empty(0)


def record_trace(engine: Engine, ids: Sequence[int], done: Done, *, prompt_id: str,
                 category: str, max_tokens: int, sampling: SamplingParams | None = None,
                 regions: Regions = ()) -> PromptTrace:
    """The trace of a finished target-alone run (`done`) of prompt `ids`, greedy unless
    `sampling` says otherwise.

    Costs one batched draft pass over the sequence (and one target decode to learn which
    end token stopped the run; a sampled trace: a batched target pass too). Both caches are
    left empty.
    """
    assert engine.draft_ctx is not None and engine.draft_model is not None, \
        "traces need a draft model"
    sampled = sampling is not None and not sampling.greedy
    target = list(done.tokens)
    if done.finish_reason == "eos":
        # Under sampling any end token will do: acceptance chances depend on the prefix only.
        target.append(_end_token(engine, ids, target))
    seq = [*ids, *target]
    n, n_vocab = len(target), engine.n_vocab
    # Row r of the batch seq[P-1+start : ...] predicts generated position start + r.
    rows = seq[len(ids) - 1: len(ids) - 1 + n]
    scratch = entropy_scratch(n_vocab)
    draft = np.empty(n, np.int32)
    entropy = np.empty(n, np.float32)
    top = np.empty(n, np.float32)
    eog = np.empty(n, np.bool_)
    top_ids = np.empty((n, MAX_CANDIDATES), np.int32)
    top_probs = np.empty((n, MAX_CANDIDATES), np.float16)
    chances = np.empty(n if sampled else 0, np.float32)
    alt_accept = np.empty((n if sampled else 0, MAX_CANDIDATES - 1), np.float16)
    copy_prob = np.empty(n if sampled else 0, np.float32)
    proposals = copy_walk(np.asarray(seq, np.int32), len(ids), regions).tokens if sampled \
        else np.empty(0, np.int32)
    dctx, tctx = engine.draft_ctx, engine.target_ctx
    hidden = np.empty((n, dctx.model.n_embd), np.float16)
    dctx.clear()
    dctx.decode(seq[: len(ids) - 1], Outputs.NONE)
    dctx.output_hidden(True)
    if sampled:  # the target's cache still holds the prompt from the run
        tctx.decode(seq[tctx.keep_prefix(ids, len(ids) - 1): len(ids) - 1], Outputs.NONE)
    step = min(dctx.n_batch, tctx.n_batch)
    for start in range(0, n, step):
        chunk = rows[start:start + step]
        dctx.decode(chunk, Outputs.ALL)
        if sampled:
            tctx.decode(chunk, Outputs.ALL)
        for r in range(len(chunk)):
            i = start + r
            logits = dctx.logits(r)[:n_vocab]
            tok = int(logits.argmax())
            draft[i] = tok
            hidden[i] = dctx.hidden(r)
            entropy[i], top[i] = entropy_and_top_prob(logits, scratch)
            eog[i] = engine.draft_model.is_eog(tok)
            best = top_candidates(logits)
            top_ids[i] = best
            # softmax of the best logits: scratch[1] holds exp(logits - max) from above
            top_probs[i] = scratch[1][best] * top[i]
            if sampled:
                assert sampling is not None
                p = distribution(tctx.logits(r)[:n_vocab], sampling)
                q = distribution(logits, sampling)
                chances[i] = np.minimum(p, q).sum()
                alts = top_candidates(q)[1:]
                alt_accept[i] = np.cumsum(residual(p, q, tok)[alts])
                c = proposals[i]
                copy_prob[i] = p[c] if c >= 0 else np.nan
    dctx.output_hidden(False)
    dctx.clear()
    tctx.clear()
    budget = min(max_tokens, engine.n_ctx - len(ids))
    return PromptTrace(prompt_id, category, len(ids), budget, done.finish_reason,
                       np.asarray(target, np.int32), draft, entropy, top, eog,
                       np.asarray(ids, np.int32),
                       sampling.temperature if sampling is not None else 0.0, chances,
                       top_ids, top_probs, alt_accept, hidden, copy_prob, tuple(regions))


@dataclass(frozen=True)
class CopyWalk:
    """What `auto`'s copier proposes at each generated position of a prompt + path: the
    token, where in the context its text lies, and the evidence it carries (-1, -1 and None
    where it has nothing). Its chain follows the path as a live copier follows the reply."""

    tokens: npt.NDArray[np.int32]
    sources: npt.NDArray[np.int64]
    evidence: list[CopyEvidence | None]

    def runs(self, context: npt.NDArray[np.int32], prompt_len: int, most: int
             ) -> npt.NDArray[np.int64]:
        """runs[j]: how many tokens a copy made at position j would have right (at most
        `most`), the path being the truth."""
        n = len(self.tokens)
        out = np.zeros(n, np.int64)
        for j in np.flatnonzero(self.sources >= 0).tolist():
            src = int(self.sources[j])
            span = min(most, n - j, prompt_len + j - src)
            same = context[src: src + span] == context[prompt_len + j: prompt_len + j + span]
            out[j] = span if same.all() else int(np.argmin(same))
        return out


def copy_walk(context: npt.NDArray[np.int32], prompt_len: int, regions: Regions = ()
              ) -> CopyWalk:
    """The copier run along a prompt + path (see `CopyWalk`)."""
    transcript = Transcript.of_sequence(context, prompt_len, regions)
    copier = Copier()
    n = len(context) - prompt_len
    walk = CopyWalk(np.full(n, -1, np.int32), np.full(n, -1, np.int64), [None] * n)
    for i in range(n):
        transcript.length = prompt_len + i
        copier.advance(transcript, 1 if i else 0)
        copy = copier.find(transcript, 1)
        if copy is not None:
            walk.tokens[i], walk.sources[i] = int(copy.tokens[0]), copy.source
            walk.evidence[i] = copy.evidence
    return walk


def _end_token(engine: Engine, ids: Sequence[int], generated: list[int]) -> int:
    """Which end-of-generation token the target chose after `generated` (the run's cache
    normally holds all but the last token, so this is one decode; the cache keeps it)."""
    ctx = engine.target_ctx
    seq = [*ids, *generated]
    ctx.decode(seq[ctx.keep_prefix(seq, len(seq) - 1):], Outputs.LAST)
    return int(ctx.logits()[: engine.n_vocab].argmax())
