"""Greedy traces: along the target's own greedy path, what the draft would have proposed.

Per generated position i the trace holds the target's token and, given the TRUE prefix, the
draft's argmax, entropy (nats) and top-1 probability. For greedy decoding that replays any
stopping policy: a round starting at i accepts draft tokens up to the first position where the
draft's argmax differs from the target's token, and every statistic a policy looks at up to
that point is the one recorded here. (After the first mismatch the live draft continues on
its own wrong prefix; the replay uses the true-prefix statistics there. That can change how
many tokens a round drafts, never how many it accepts.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from svip_local.engine import common_prefix
from svip_local.native import Outputs
from svip_local.policies import entropy_and_top_prob

if TYPE_CHECKING:
    from svip_local.engine import Engine
    from svip_local.events import Done

_ARRAYS = ("target", "draft", "entropy", "top_prob", "draft_eog")


@dataclass(frozen=True)
class PromptTrace:
    """One prompt's greedy path. When the run ended at an end-of-generation token, that token
    is the last position (the draft may predict it too), so arrays are one longer than
    `generated`."""

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

    @property
    def generated(self) -> int:
        return len(self.target) - (1 if self.finish == "eos" else 0)

    @property
    def match(self) -> npt.NDArray[np.bool_]:
        return self.target == self.draft

    def context(self) -> npt.NDArray[np.int32] | None:
        """Prompt and target path as one sequence (the context before position j is its first
        prompt_tokens + j entries), or None when the prompt was not recorded."""
        if len(self.prompt_ids) != self.prompt_tokens:
            return None
        return np.concatenate([self.prompt_ids, self.target])


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
                  "length": len(t.target), "prompt_length": len(t.prompt_ids)}
                 for t in self.traces]
        arrays = {name: np.concatenate([getattr(t, name) for t in self.traces])
                  if self.traces else np.empty(0) for name in (*_ARRAYS, "prompt_ids")}
        header = json.dumps({"meta": self.meta, "index": index})
        np.savez_compressed(path, header=np.array(header), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TraceSet:
        with np.load(path) as data:
            header = json.loads(str(data["header"]))
            arrays = {name: data[name] for name in _ARRAYS}
            prompts = data["prompt_ids"] if "prompt_ids" in data else np.empty(0, np.int32)
        traces, start, p_start = [], 0, 0
        for row in header["index"]:
            end, p_end = start + row.pop("length"), p_start + row.pop("prompt_length", 0)
            traces.append(PromptTrace(**row, **{k: v[start:end] for k, v in arrays.items()},
                                      prompt_ids=prompts[p_start:p_end]))
            start, p_start = end, p_end
        return cls(header["meta"], traces)


def record_trace(engine: Engine, ids: Sequence[int], done: Done, *, prompt_id: str,
                 category: str, max_tokens: int) -> PromptTrace:
    """The trace of a finished greedy target-alone run (`done`) of prompt `ids`.

    Costs one batched draft pass over the sequence (and one target decode to learn which
    end token stopped the run). Both caches are left empty.
    """
    assert engine.draft_ctx is not None, "traces need a draft model"
    target = list(done.tokens)
    if done.finish_reason == "eos":
        target.append(_end_token(engine, ids, target))
    seq = [*ids, *target]
    ctx, n_vocab = engine.draft_ctx, engine.n_vocab
    scratch = np.empty(n_vocab, dtype=np.float32)
    n = len(target)
    draft = np.empty(n, np.int32)
    entropy = np.empty(n, np.float32)
    top = np.empty(n, np.float32)
    eog = np.empty(n, np.bool_)
    ctx.clear()
    ctx.decode(seq[: len(ids) - 1], Outputs.NONE)
    # Row r of the batch seq[P-1+start : ...] predicts generated position start + r.
    rows = seq[len(ids) - 1: len(ids) - 1 + n]
    for start in range(0, n, ctx.n_batch):
        chunk = rows[start:start + ctx.n_batch]
        ctx.decode(chunk, Outputs.ALL)
        for r in range(len(chunk)):
            logits = ctx.logits(r)[:n_vocab]
            tok = int(logits.argmax())
            draft[start + r] = tok
            entropy[start + r], top[start + r] = entropy_and_top_prob(logits, scratch)
            eog[start + r] = engine.draft_model.is_eog(tok)  # type: ignore[union-attr]
    ctx.clear()
    budget = min(max_tokens, engine.n_ctx - len(ids))
    return PromptTrace(prompt_id, category, len(ids), budget, done.finish_reason,
                       np.asarray(target, np.int32), draft, entropy, top, eog,
                       np.asarray(ids, np.int32))


def _end_token(engine: Engine, ids: Sequence[int], generated: list[int]) -> int:
    """Which end-of-generation token the target chose after `generated` (the run's cache
    normally holds all but the last token, so this is one decode)."""
    ctx = engine.target_ctx
    seq = [*ids, *generated]
    ctx.truncate(common_prefix(ctx.tokens, seq, len(seq) - 1))
    ctx.decode(seq[len(ctx.tokens):], Outputs.LAST)
    tok = int(ctx.logits()[: engine.n_vocab].argmax())
    ctx.clear()
    return tok
