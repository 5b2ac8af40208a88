"""Cost-aware SVIP (`svip-cost[:R]`): draft one more token only while it pays for itself.

SVIP stops when the draft's entropy says the next token is unlikely to be accepted, with a
threshold that ignores what a token costs. Here the entropy is turned into an acceptance
probability by a mapping fitted on this pair's traces, and the costs come from this machine's
cost model. With P_n the probability that the first n draft tokens are all accepted:

* keep token n  iff  P_n >= R * (verify(n+1) - verify(n))   (its extra verification row)
* draft token n+1  iff  P_n * a_next(H_n) >= R * (draft step + verify(n+2) - verify(n+1))

where a_next(H) is the chance the next token is accepted given this one was and had entropy H,
and R (tokens/s) is the rate the extra work must beat. Maximising tokens - R * time per round
at R = the best achievable decode rate maximises that rate (Dinkelbach); calibration finds R by
iterating R <- simulated decode rate of svip-cost:R. (Decode, not total: prefill does not
depend on the policy, and counting it would value time too cheaply and draft too long.)
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from svip_local.bench.costs import CostModel, nondecreasing
from svip_local.errors import InvalidRequestError
from svip_local.policies import DEFAULT_MAX_DRAFT, DraftPolicy, StepStats, Verdict


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
    def fit(cls, runs: Sequence[tuple[npt.NDArray[np.floating], npt.NDArray[np.bool_]]],
            bins: int = 12) -> AcceptanceMap:
        """Fit on (entropy, accepted) arrays, one pair per prompt, binned by entropy
        quantiles and made non-increasing (pool-adjacent-violators)."""
        ent = np.concatenate([e for e, _ in runs]).astype(np.float64)
        acc = np.concatenate([m for _, m in runs]).astype(np.float64)
        if len(ent) == 0:
            raise ValueError("no trace positions to fit an acceptance map on")
        # For a_next: positions whose token was accepted and that have a successor.
        nxt_e = np.concatenate([e[:-1][m[:-1]] for e, m in runs]).astype(np.float64)
        nxt_a = np.concatenate([m[1:][m[:-1]] for _, m in runs]).astype(np.float64)
        n_bins = max(1, min(bins, len(ent) // 20))
        edges = np.unique(np.quantile(ent, np.linspace(0, 1, n_bins + 1)))
        if len(edges) < 2:
            edges = np.array([ent.min(), ent.min() + 1e-6])
        knots, now, after, w_now, w_after = [], [], [], [], []
        overall_next = float(nxt_a.mean()) if len(nxt_a) else float(acc.mean())
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            last = hi == edges[-1]
            sel = (ent >= lo) & ((ent <= hi) if last else (ent < hi))
            if not sel.any():
                continue
            knots.append(float(np.median(ent[sel])))
            now.append(float(acc[sel].mean()))
            w_now.append(float(sel.sum()))
            nsel = (nxt_e >= lo) & ((nxt_e <= hi) if last else (nxt_e < hi))
            after.append(float(nxt_a[nsel].mean()) if nsel.any() else overall_next)
            w_after.append(float(max(1, nsel.sum())))
        return cls(tuple(knots), tuple(_nonincreasing(now, w_now)),
                   tuple(_nonincreasing(after, w_after)))


def _nonincreasing(values: Sequence[float], weights: Sequence[float]) -> list[float]:
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


class CostAwareSvip(DraftPolicy):
    """Entropy-driven like SVIP, but stops where one more token no longer pays (see module)."""

    wants_entropy = True

    def __init__(self, costs: CostModel, acceptance: AcceptanceMap, rate: float,
                 max_draft: int = DEFAULT_MAX_DRAFT) -> None:
        if not rate > 0:
            raise InvalidRequestError(f"svip-cost rate must be positive tokens/s, got {rate}")
        self.acceptance = acceptance
        self.rate = rate
        self.max_draft = max_draft
        self.name = f"svip-cost:{rate:.4g}"
        d = costs.base_depth
        # keep[n]: extra verification cost of the n-th draft token (index 0 unused).
        self._keep = [0.0] + [max(0.0, costs.verify(n + 1, d) - costs.verify(n, d))
                              for n in range(1, max_draft + 2)]
        self._step = costs.draft(1, d) + costs.step_s + costs.argmax_s + costs.entropy_s
        self._p = 1.0

    def round_limit(self) -> int:
        return self.max_draft

    def judge(self, step: StepStats) -> Verdict:
        n = step.n_drafted
        if n == 1:
            self._p = 1.0
        p = self._p * self.acceptance.accept(step.entropy)
        if p < self.rate * self._keep[n]:
            return Verdict.DROP
        self._p = p
        gain = p * self.acceptance.accept_next(step.entropy)
        if gain < self.rate * (self._step + self._keep[n + 1]):
            return Verdict.STOP
        return Verdict.CONTINUE


def parse_cost_policy(spec: str, costs: CostModel, acceptance: AcceptanceMap,
                      default_rate: float, *, max_draft: int = DEFAULT_MAX_DRAFT
                      ) -> CostAwareSvip:
    """`svip-cost` (the calibrated rate) or `svip-cost:R` (R tokens/s)."""
    _, _, arg = spec.strip().partition(":")
    try:
        rate = float(arg) if arg else default_rate
    except ValueError as exc:
        raise InvalidRequestError(f"bad argument in policy {spec!r}: {exc}") from exc
    return CostAwareSvip(costs, acceptance, rate, max_draft=max_draft)
