"""The copy model (`calibration.copies`) fitted on traces, and how well it predicts.

Every generated position where `auto`'s copier proposes a token is one example: the evidence
its match carries, and whether the target accepts the token there (greedy: it is the
target's token; sampled: the target's probability of it, `PromptTrace.copy_prob`). The
copier's chain follows the recorded path as it follows a live reply, so a position deep in a
chain is an example of a token whose predecessors were accepted, as in a live copy round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from svip_local.bench.predictors import weighted_auc
from svip_local.bench.traces import PromptTrace, copy_walk
from svip_local.calibration.copies import CopyEvidence, CopyModel, prior_copy_model
from svip_local.calibration.head import log_loss

FOLDS = 4
Example = tuple[CopyEvidence, list[float]]


def copy_examples(trace: PromptTrace) -> list[Example]:
    """(evidence, [acceptance]) at each position where the copier proposes a token; none
    for a trace without its prompt or a sampled one recorded before `copy_prob`."""
    context = trace.context()
    sampled = trace.temperature > 0
    if context is None or (sampled and len(trace.copy_prob) != len(trace.target)):
        return []
    walk = copy_walk(context, trace.prompt_tokens, trace.regions)
    out = []
    for i, ev in enumerate(walk.evidence[:trace.generated]):
        if ev is None:
            continue
        y = float(trace.copy_prob[i]) if sampled else float(walk.tokens[i] == trace.target[i])
        if math.isfinite(y):
            out.append((ev, [y]))
    return out


def fit_copy_model(traces: Sequence[PromptTrace], temperature: float) -> CopyModel | None:
    """The prior copy model at this temperature updated by every example of `traces`; None
    where they hold none (no prompts recorded, nothing to copy)."""
    examples = [e for t in traces for e in copy_examples(t)]
    return CopyModel.fit(prior_copy_model(temperature), examples) if examples else None


def compare(traces: Sequence[PromptTrace], folds: int = FOLDS) -> dict[str, Any]:
    """Held-out log-loss and ROC AUC of the copy model against one acceptance rate for every
    copied token (what a running mean knows), each fitted on the other folds of the
    prompts; {} with fewer than two prompts or no examples."""
    ids = list(dict.fromkeys(t.prompt_id for t in traces))
    k = min(folds, len(ids))
    if k < 2:
        return {}
    by_prompt = {i: [e for t in traces if t.prompt_id == i for e in copy_examples(t)]
                 for i in ids}
    model_p, rate_p, labels = [], [], []
    for f in range(k):
        test = set(ids[f::k])
        train = [e for i in ids if i not in test for e in by_prompt[i]]
        held = [e for i in ids if i in test for e in by_prompt[i]]
        if not train or not held:
            continue
        model = CopyModel.fit(prior_copy_model(traces[0].temperature), train)
        rate = float(np.mean([ys[0] for _, ys in train]))
        for ev, ys in held:
            model_p.append(float(model.chances(ev, 1)[0]))
            rate_p.append(rate)
            labels.append(ys[0])
    if not labels:
        return {}
    y, pm, pr = np.array(labels), np.array(model_p), np.array(rate_p)
    return {"positions": len(y), "base_rate": float(y.mean()),
            "model": {"log_loss": log_loss(pm, y), "auc": weighted_auc(pm, y)},
            "one rate": {"log_loss": log_loss(pr, y), "auc": 0.5}}


def summary_line(result: dict[str, Any]) -> str:
    """`compare`'s outcome in one line ('' when there is none)."""
    if not result:
        return ""
    m, r = result["model"], result["one rate"]
    return (f"held-out copy acceptance ({result['positions']} copied positions, accepted "
            f"{result['base_rate']:.0%}; log-loss / ROC AUC): copy model {m['log_loss']:.3f} / "
            f"{m['auc']:.3f}, one rate {r['log_loss']:.3f}")
