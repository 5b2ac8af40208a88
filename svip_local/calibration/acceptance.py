"""How often the target accepts a draft token, by the draft's own entropy at that step.

Fitted by calibration on this pair's traces (one map per sampling temperature: acceptance falls
as the temperature rises); cost-aware SVIP turns entropies into acceptance chances with it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from svip_local.calibration.costs import nondecreasing


@dataclass(frozen=True)
class AcceptanceMap:
    """Non-increasing piecewise-linear maps from draft entropy (nats) to acceptance chances.

    `now[i]`: P(token accepted | entropy ~ knots[i]); `after[i]`: P(the NEXT token accepted |
    this one accepted with entropy ~ knots[i]).
    """

    knots: tuple[float, ...]
    now: tuple[float, ...]
    after: tuple[float, ...]

    def accept(self, entropy: float) -> float:
        return _interp(self.knots, self.now, entropy)

    def accept_next(self, entropy: float) -> float:
        return _interp(self.knots, self.after, entropy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AcceptanceMap:
        return cls(tuple(data["knots"]), tuple(data["now"]), tuple(data["after"]))

    @classmethod
    def fit(cls, runs: Sequence[tuple[npt.NDArray[np.floating], npt.NDArray[Any]]],
            bins: int = 12) -> AcceptanceMap:
        """Fit on (entropy, accepted) arrays, one pair per prompt, binned by entropy
        quantiles and made non-increasing (pool-adjacent-violators). `accepted` may be
        outcomes (booleans) or chances (a sampled trace's): a_next then weighs each
        position by the chance its token was accepted."""
        ent = np.concatenate([e for e, _ in runs]).astype(np.float64)
        acc = np.concatenate([m for _, m in runs]).astype(np.float64)
        if len(ent) == 0:
            raise ValueError("no trace positions to fit an acceptance map on")
        # For a_next: positions with a successor, weighted by their own acceptance.
        nxt_e = np.concatenate([e[:-1] for e, _ in runs]).astype(np.float64)
        nxt_w = np.concatenate([np.asarray(m[:-1], np.float64) for _, m in runs])
        nxt_a = np.concatenate([np.asarray(m[1:], np.float64) for _, m in runs])
        n_bins = max(1, min(bins, len(ent) // 20))
        edges = np.unique(np.quantile(ent, np.linspace(0, 1, n_bins + 1)))
        if len(edges) < 2:
            edges = np.array([ent.min(), ent.min() + 1e-6])
        knots, now, after, w_now, w_after = [], [], [], [], []
        overall_next = float((nxt_a * nxt_w).sum() / nxt_w.sum()) if nxt_w.sum() > 0 \
            else float(acc.mean())
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            last = hi == edges[-1]
            sel = (ent >= lo) & ((ent <= hi) if last else (ent < hi))
            if not sel.any():
                continue
            knots.append(float(np.median(ent[sel])))
            now.append(float(acc[sel].mean()))
            w_now.append(float(sel.sum()))
            nsel = (nxt_e >= lo) & ((nxt_e <= hi) if last else (nxt_e < hi))
            weight = float(nxt_w[nsel].sum())
            after.append(float((nxt_a[nsel] * nxt_w[nsel]).sum()) / weight if weight > 0
                         else overall_next)
            w_after.append(max(1.0, weight))
        return cls(tuple(knots), tuple(nonincreasing(now, w_now)),
                   tuple(nonincreasing(after, w_after)))


def nonincreasing(values: Sequence[float], weights: Sequence[float]) -> list[float]:
    return [-v for v in nondecreasing([-v for v in values], weights)]


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """np.interp for one scalar, without numpy's per-call cost (this runs every draft step)."""
    i = bisect_right(xs, x)
    if i == 0:
        return ys[0]
    if i == len(xs):
        return ys[-1]
    x0, x1 = xs[i - 1], xs[i]
    return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)
