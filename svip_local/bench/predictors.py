"""How well each rule predicts that the target accepts a draft token, on prompts it was not
fitted on: the entropy map (SVIP's signal), the top-1 probability (llama.cpp's p_min), and the
learnt head (SpecDec++); and training that head on a pair's traces.

Labels are the traces' acceptance along the target's path: greedily 0 or 1, sampled the chance
rejection sampling accepts there (sum min(p, q)); log-loss is the cross-entropy against those
soft labels and ROC AUC the expected one over their draws (each position counted as a
positive with weight y and a negative with weight 1 - y, never paired with itself). The
scalar rules are turned into chances by the same monotone binned fit (`AcceptanceMap.fit`) on
the training prompts, so the log-loss compares what each signal knows, not how it happens to
be scaled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from svip_local.bench.traces import PromptTrace
from svip_local.calibration import AcceptanceMap
from svip_local.calibration.head import AcceptanceHead, Examples, log_loss, train

PREDICTORS = ("entropy map", "top-1 probability", "head")
FOLDS = 4
VALID_SHARE = 5  # every fifth training prompt is kept back for the head's early stopping
_RELIABILITY_BINS = 10


def has_hidden(traces: Sequence[PromptTrace]) -> bool:
    return bool(traces) and all(len(t.hidden) for t in traces)


def examples(traces: Sequence[PromptTrace]) -> Examples:
    return Examples.of_runs([(t.hidden[:t.generated], t.entropy[:t.generated],
                              t.top_prob[:t.generated], t.acceptance[:t.generated])
                             for t in traces])


def _prompt_folds(traces: Sequence[PromptTrace], k: int) -> list[set[str]]:
    """Every k-th prompt, so each fold mixes categories."""
    ids = list(dict.fromkeys(t.prompt_id for t in traces))
    return [set(ids[f::k]) for f in range(min(k, len(ids)))]


def fit_head(traces: Sequence[PromptTrace], temperature: float) -> AcceptanceHead | None:
    """A head trained on these traces (one temperature), early-stopped on a fifth of their
    prompts; None where they hold no hidden states or too few prompts to hold any back."""
    if not has_hidden(traces):
        return None
    ids = list(dict.fromkeys(t.prompt_id for t in traces))
    if len(ids) < 2:
        return None
    held = set(ids[VALID_SHARE - 1::VALID_SHARE] or ids[-1:])
    fit = examples([t for t in traces if t.prompt_id not in held])
    valid = examples([t for t in traces if t.prompt_id in held])
    return train(fit, valid, temperature)


def weighted_auc(score: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """ROC AUC of `score` against soft labels `y` (see module); ties count half."""
    s = np.asarray(score, np.float64)
    pos = np.asarray(y, np.float64)
    neg = 1.0 - pos
    order = np.argsort(s, kind="mergesort")
    s, pos, neg = s[order], pos[order], neg[order]
    # Group equal scores: a positive beats the negatives strictly below it, ties half.
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos_g, neg_g = np.add.reduceat(pos, starts), np.add.reduceat(neg, starts)
    below = np.cumsum(neg_g) - neg_g
    # A position is never paired with itself (in one draw it is one or the other).
    self_pairs = float((pos * neg).sum())
    total = pos.sum() * neg.sum() - self_pairs
    wins = (pos_g * (below + 0.5 * neg_g)).sum() - 0.5 * self_pairs
    return float(wins / total) if total > 0 else 0.5


def _scalar_map(x: Sequence[npt.NDArray[Any]], acc: Sequence[npt.NDArray[Any]]
                ) -> AcceptanceMap:
    return AcceptanceMap.fit(list(zip(x, acc, strict=True)))


def held_out_predictions(traces: Sequence[PromptTrace], folds: int = FOLDS
                         ) -> dict[str, npt.NDArray[np.float64]] | None:
    """Each fold's positions predicted by rules fitted on the other folds: chance per
    predictor, the raw scores the rules rank by, and the labels. None without hidden
    states or with fewer than two prompts."""
    parts = _prompt_folds(traces, folds)
    if not has_hidden(traces) or len(parts) < 2:
        return None
    out: dict[str, list[npt.NDArray[np.float64]]] = {k: [] for k in (
        *PREDICTORS, "label", "entropy", "top_prob")}
    temperature = traces[0].temperature
    for test_ids in parts:
        fit = [t for t in traces if t.prompt_id not in test_ids]
        test = [t for t in traces if t.prompt_id in test_ids]
        gen = [t.generated for t in fit]
        acc = [t.acceptance[:n] for t, n in zip(fit, gen, strict=True)]
        by_entropy = _scalar_map([t.entropy[:n] for t, n in zip(fit, gen, strict=True)], acc)
        # The map is non-increasing in its input: 1 - p1 for the top-1 probability.
        by_top = _scalar_map([1.0 - t.top_prob[:n] for t, n in zip(fit, gen, strict=True)],
                             acc)
        head = fit_head(fit, temperature)
        assert head is not None
        ex = examples(test)
        ent = np.concatenate([t.entropy[:t.generated] for t in test]).astype(np.float64)
        top = np.concatenate([t.top_prob[:t.generated] for t in test]).astype(np.float64)
        out["entropy map"].append(np.interp(ent, by_entropy.knots, by_entropy.now))
        out["top-1 probability"].append(np.interp(1.0 - top, by_top.knots, by_top.now))
        out["head"].append(head.predict_batch(ex.hidden, ent, top)[:, 0])
        out["label"].append(ex.labels[:, 0])
        out["entropy"].append(ent)
        out["top_prob"].append(top)
    return {k: np.concatenate(v) for k, v in out.items()}


def compare(traces: Sequence[PromptTrace], folds: int = FOLDS) -> dict[str, Any]:
    """Held-out log-loss and ROC AUC of each predictor, and reliability bins (mean predicted
    against mean observed acceptance) for a calibration plot; {} where the traces cannot
    tell (no hidden states, one prompt)."""
    pred = held_out_predictions(traces, folds)
    if pred is None:
        return {}
    y = pred["label"]
    scores = {"entropy map": -pred["entropy"], "top-1 probability": pred["top_prob"],
              "head": pred["head"]}
    rows = {}
    for name in PREDICTORS:
        p = pred[name]
        edges = np.quantile(p, np.linspace(0, 1, _RELIABILITY_BINS + 1))
        which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, _RELIABILITY_BINS - 1)
        bins = [{"predicted": float(p[which == b].mean()), "observed": float(y[which == b]
                                                                          .mean()),
                 "n": int((which == b).sum())}
                for b in range(_RELIABILITY_BINS) if (which == b).any()]
        rows[name] = {"log_loss": log_loss(p, y), "auc": weighted_auc(scores[name], y),
                      "reliability": bins}
    return {"positions": len(y), "folds": min(folds, len(_prompt_folds(traces, folds))),
            "base_rate": float(y.mean()), "base_log_loss": log_loss(np.full_like(y, y.mean()),
                                                                    y),
            "predictors": rows}


def summary_line(result: dict[str, Any]) -> str:
    """`compare`'s outcome in one line ('' when there is none)."""
    if not result:
        return ""
    parts = [f"{name} {r['log_loss']:.3f} / {r['auc']:.3f}"
             for name, r in result["predictors"].items()]
    return (f"held-out acceptance prediction ({result['positions']} positions, "
            f"{result['folds']} folds; log-loss / ROC AUC, constant {result['base_log_loss']:.3f}"
            f"): " + ", ".join(parts))
