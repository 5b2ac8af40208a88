"""Hand-made traces and cost models for simulator tests, whose answers can be worked out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from svip_local.bench.traces import PromptTrace
from svip_local.calibration import CostModel


def make_trace(match: Sequence[bool], *, entropy: Sequence[float] | None = None,
               prompt_tokens: int = 4, budget: int | None = None, finish: str = "length",
               top_prob: Sequence[float] | None = None) -> PromptTrace:
    n = len(match)
    target = np.arange(100, 100 + n, dtype=np.int32)
    draft = np.where(np.asarray(match), target, 1).astype(np.int32)
    eog = np.zeros(n, np.bool_)
    if finish == "eos":  # the last target token is the end token; so is the draft's guess
        eog[-1] = bool(match[-1])
    return PromptTrace("p", "qa", prompt_tokens, budget if budget is not None else n, finish,
                       target, draft,
                       np.asarray(entropy if entropy is not None else [0.1] * n, np.float32),
                       np.asarray(top_prob if top_prob is not None else [0.9] * n, np.float32),
                       eog)


def make_costs(verify: Callable[[int], float], draft: Sequence[float] = (0.01, 0.02, 0.03, 0.04),
               *, draft_prefill: tuple[float, float, float] = (0.0, 0.01, 0.0),
               **extra: float) -> CostModel:
    fields: dict[str, Any] = dict(
        verify_s=tuple(verify(b) for b in range(1, 18)), draft_s=tuple(draft), argmax_s=0.0,
        entropy_s=0.0, target_prefill_s=(0.0, 0.0, 0.0), draft_prefill_s=draft_prefill,
        target_depth_s=0.0, draft_depth_s=0.0, base_depth=0)
    return CostModel(**{**fields, **extra})
