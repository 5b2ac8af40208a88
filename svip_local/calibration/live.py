"""What the live `auto` knows about this machine and this pair, learnt from the rounds it runs.

A calibration is a snapshot: machines drift (the same host ran 25-30% slower from one session
to the next) and texts differ (a summary copies its input, a poem does not). So every round
updates running estimates of what it just paid and got:

* `LiveCosts`: a target verification of b tokens, one draft step. Sizes not seen yet are
  predicted from a prior curve (stored calibration, else the engine's start-up probe) scaled
  by how the nearest sizes seen compare with it now.
* `LiveAcceptance`, per sampling temperature: the draft's entropy -> acceptance map, the
  copy model (`calibration.copies`: a copied token's acceptance from its match's evidence;
  greedy: from the match outcomes; sampling: from the rejection test's acceptance chances),
  the realised gain of drafting rounds.

Every estimate is a running mean whose weight is capped, so old evidence decays at a known
pace and a round costs a few additions. The state is stored beside the calibration after each
generation (`calibration.store.save_live`), so the next session starts warm; what is read
back is checked (finite, in range), never trusted.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from svip_local.calibration.acceptance import AcceptanceMap, nonincreasing
from svip_local.calibration.copies import CopyModel, prior_copy_model
from svip_local.calibration.costs import MAX_COPY_VERIFY, CostModel, nondecreasing
from svip_local.calibration.record import Calibration

FORMAT = 2  # 2: the copy model replaced copied tokens' acceptance by position
# Entropy bins (nats) of the acceptance map: fine near 0, where most greedy steps fall.
ENTROPY_EDGES = (0.0, 0.05, 0.15, 0.3, 0.5, 0.8, 1.2, 1.8, 2.6, 3.6, 5.0)
COST_WEIGHT = 30.0  # the most observations a cost estimate averages over
ACCEPT_WEIGHT = 200.0  # per entropy bin or copy position
GAIN_WEIGHT = 20.0  # drafting rounds behind the realised-gain estimate: follows the text
PRIOR_WEIGHT = 2.0  # how many observations a prior counts for
SPIKE = 4.0  # an observation above SPIKE x the estimate counts as SPIKE x (a pause, a neighbour)


def running(value: float, weight: float, x: float, cap: float) -> tuple[float, float]:
    """One step of a mean over at most `cap` observations: (new value, new weight)."""
    weight = min(weight + 1.0, cap)
    return value + (x - value) / weight, weight


@dataclass
class LiveCosts:
    """Seconds of a target verification of b = 1..MAX_COPY_VERIFY tokens and of one draft
    step (decode + per-step work), as this machine runs them now."""

    prior: list[float]  # the curve's shape: verify(b) for b = 1.., from calibration or probe
    verify: list[float] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)  # observations behind each verify[b]
    step: float = 0.0
    step_weight: float = 0.0
    catchup: float = 0.0  # per token of a draft catch-up decode (after target-alone rounds)
    catchup_weight: float = 0.0

    def __post_init__(self) -> None:
        if not self.verify:
            self.verify = list(self.prior)
            self.weight = [0.0] * len(self.prior)
        # Until the next observation (not stored): the estimates, and their table.
        self._curve: npt.NDArray[np.float64] | None = None
        self._table: list[float] = []
        self._array: npt.NDArray[np.float64] = np.empty(0)

    def _estimates(self) -> npt.NDArray[np.float64]:
        """verify(1..len(prior)): sizes observed as observed, the others as the prior
        scaled by the observed/prior ratio of the nearest observed sizes (interpolated in
        log b): a deep context slows a big batch more than a single row, so one global
        scale would price long copies from single decodes."""
        if self._curve is None:
            prior = np.maximum(np.asarray(self.prior), 1e-9)
            verify, seen = np.asarray(self.verify), np.asarray(self.weight) > 0
            at = np.flatnonzero(seen)
            if len(at):
                logs = np.log(np.arange(1, len(prior) + 1))
                ratio = np.interp(logs, logs[at], verify[at] / prior[at])
                self._curve = np.where(seen, verify, prior * ratio)
            else:
                self._curve = prior
        return self._curve

    def verify_at(self, b: int) -> float:
        curve = self._estimates()
        if b <= len(curve):
            return float(curve[b - 1])
        return float(curve[-1] + (curve[-1] - curve[-2]) * (b - len(curve)))  # its last slope

    def table(self, n: int) -> list[float]:
        """verify(1..n), made non-decreasing (a bigger batch never costs less); rebuilt only
        after a verification was observed, not every round."""
        if len(self._table) < n:
            self._table = nondecreasing([self.verify_at(b) for b in range(
                1, max(n, len(self.prior)) + 1)])
        return self._table[:n]

    def array(self, n: int) -> npt.NDArray[np.float64]:
        """verify(0..n) as an array (verify(0) = 0), non-decreasing, for pricing copies of
        every length at once."""
        if len(self._array) < n + 1:
            self._array = np.array([0.0, *self.table(n)])
        return self._array[:n + 1]

    def observe_verify(self, b: int, seconds: float) -> None:
        i = min(b, len(self.prior)) - 1
        if i != b - 1:
            return
        current = self.verify_at(b)
        self._curve, self._table, self._array = None, [], np.empty(0)
        x = min(seconds, SPIKE * current) if current > 0 else seconds
        if self.weight[i] == 0:
            self.verify[i] = x
        self.verify[i], self.weight[i] = running(self.verify[i], self.weight[i], x, COST_WEIGHT)

    def observe_step(self, seconds: float) -> None:
        x = min(seconds, SPIKE * self.step) if self.step > 0 else seconds
        self.step, self.step_weight = running(self.step, self.step_weight, x, COST_WEIGHT)

    def observe_catchup(self, tokens: int, seconds: float) -> None:
        self.catchup, self.catchup_weight = running(self.catchup, self.catchup_weight,
                                                    seconds / tokens, COST_WEIGHT)

    @classmethod
    def from_model(cls, costs: CostModel) -> LiveCosts:
        """The prior a calibration gives: its tables at its depth, each row's argmax
        included (the live times include them too)."""
        d = costs.base_depth
        prior = [costs.verify(b, d) + costs.argmax_s * b for b in range(1, MAX_COPY_VERIFY + 1)]
        step = costs.draft(1, d) + costs.step_s + costs.argmax_s + costs.entropy_s
        return cls(prior, step=step, step_weight=PRIOR_WEIGHT,
                   catchup=costs.draft_prefill_s[1], catchup_weight=PRIOR_WEIGHT)

    @classmethod
    def from_probe(cls, sizes: Sequence[int], verify_s: Sequence[float], step_s: float,
                   catchup_s: float) -> LiveCosts:
        """The prior a probe gives: verification at a few sizes, linear between them."""
        prior = [_interp(sizes, verify_s, b) for b in range(1, MAX_COPY_VERIFY + 1)]
        return cls(prior, step=step_s, step_weight=PRIOR_WEIGHT, catchup=catchup_s,
                   catchup_weight=PRIOR_WEIGHT)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LiveCosts:
        out = cls(**_floats(data))
        if not (len(out.prior) == len(out.verify) == len(out.weight) >= 2):
            raise ValueError("live cost tables have the wrong shape")
        _check("seconds", [*out.prior, *out.verify, out.step, out.catchup], 0.0, MAX_SECONDS)
        _check("weights", [*out.weight, out.step_weight, out.catchup_weight], 0.0,
               COST_WEIGHT)
        if min(out.prior) <= 0:
            raise ValueError("live cost prior has a non-positive time")
        return out


MAX_SECONDS = 600.0  # no decode takes longer: a stored time beyond it is corrupt
MAX_GAIN = 1e4  # tokens a round gains or loses, far beyond any real one


class BatchPrices:
    """`LiveCosts` as one request sees them in a batch shared with others: its rows cost what
    they add to the `others` rows the other requests bring, verify(m + b) - verify(m), and a
    draft step holds up the `waiting` other requests as well as its own, so drafting shrinks
    when the batch is already full and grows when the request is alone (m = 0: verify(b)).
    The curve it reads is learnt from whole batches, every row in them."""

    def __init__(self, costs: LiveCosts) -> None:
        self.costs = costs
        self.others = 0
        self.waiting = 0

    @property
    def step(self) -> float:
        return self.costs.step * (1 + self.waiting)

    @property
    def catchup(self) -> float:
        return self.costs.catchup

    def verify_at(self, b: int) -> float:
        m = self.others
        return self.costs.verify_at(m + b) - (self.costs.verify_at(m) if m else 0.0)

    def table(self, n: int) -> list[float]:
        m = self.others
        if not m:
            return self.costs.table(n)
        full = self.costs.table(m + n)
        return [x - full[m - 1] for x in full[m:]]

    def array(self, n: int) -> npt.NDArray[np.float64]:
        m = self.others
        full = self.costs.array(m + n)
        return full[m:] - full[m] if m else full


def _check(what: str, values: Sequence[float], low: float, high: float) -> None:
    """Refuse stored estimates that are not finite or out of [low, high]."""
    for v in values:
        if not (math.isfinite(v) and low <= v <= high):
            raise ValueError(f"{what} out of range: {v!r} (expected {low:g}..{high:g})")


def default_costs() -> LiveCosts:
    """Costs before anything was measured (no calibration, probe skipped): a CPU-like curve
    whose scale the first rounds correct."""
    return LiveCosts([0.05 * (1 + 0.5 * (b - 1)) for b in range(1, MAX_COPY_VERIFY + 1)],
                     step=0.02, step_weight=1.0, catchup=0.005, catchup_weight=1.0)


@dataclass
class LiveAcceptance:
    """How often the target accepts, at one sampling temperature, learnt from every round."""

    hits: list[float]  # per entropy bin: accepted drafted tokens (prior included)
    tries: list[float]  # drafted tokens verified with all before them accepted
    next_hits: list[float]  # per bin of an ACCEPTED token: its successor accepted
    next_tries: list[float]
    copies: CopyModel  # a copied token's chance, from its match's evidence
    gain: float = 0.0  # realised tokens gained per drafting round over the target alone
    gain_weight: float = 0.0
    # How often draft steps fall in each entropy bin, until some are observed: what the
    # mean acceptance is averaged with (`PRIOR_OCCUPANCY`).
    occupancy: list[float] = field(default_factory=list)

    @classmethod
    def prior(cls, amap: AcceptanceMap | None, temperature: float,
              copies: CopyModel | None = None) -> LiveAcceptance:
        """Pseudo-observations worth PRIOR_WEIGHT per bin: the calibration's map, else
        `prior_accept`'s curves; the calibration's copy model, else the prior one."""
        centers = bin_centers()
        if amap is not None:
            now = [amap.accept(h) for h in centers]
            after = [amap.accept_next(h) for h in centers]
        else:
            now = [prior_accept(h, temperature) for h in centers]
            after = [prior_accept_next(h, temperature) for h in centers]
        w = PRIOR_WEIGHT
        return cls([w * p for p in now], [w] * len(now), [w * p for p in after],
                   [w] * len(after),
                   copies.copy() if copies is not None else prior_copy_model(temperature),
                   occupancy=list(PRIOR_OCCUPANCY[temperature > 0]))

    def __post_init__(self) -> None:
        self._map: AcceptanceMap | None = None  # until the next drafted round (not stored)

    def acceptance_map(self) -> AcceptanceMap:
        if self._map is None:
            self._map = self._fit_map()
        return self._map

    def _fit_map(self) -> AcceptanceMap:
        now = [h / t for h, t in zip(self.hits, self.tries, strict=True)]
        after = [h / t for h, t in zip(self.next_hits, self.next_tries, strict=True)]
        return AcceptanceMap(tuple(bin_centers()), tuple(nonincreasing(now, self.tries)),
                             tuple(nonincreasing(after, self.next_tries)))

    def mean_accept(self) -> float:
        """Acceptance of a drafted token over the entropies seen (observations only: the
        prior's flat weight would count rare bins as often as common ones; before any, over
        the bins as often as drafts usually fall in them)."""
        return _seen_mean(self.hits, self.tries, self.occupancy)

    def mean_accept_next(self) -> float:
        """P(a drafted token is accepted | the one before it was), over the entropies seen.
        Acceptance comes in runs (an easy stretch of text stays easy), so this is well above
        `mean_accept`: a prediction that treated tokens as independent would say drafting
        loses where its long accepted runs win."""
        return _seen_mean(self.next_hits, self.next_tries, self.occupancy)

    def observe_draft(self, entropies: Sequence[float], drafted: int, accepted: int,
                      chances: Sequence[float] = ()) -> None:
        """A drafted round: tokens before `accepted` matched, the one at it was rejected.
        When sampling, each tested token counts its acceptance chance (`chances`, the
        rejection test's min(1, p/q)) rather than its outcome: the same mean, less noise."""
        self._map = None
        for i in range(min(drafted, accepted + 1, len(entropies))):
            b = entropy_bin(entropies[i])
            self.hits[b], self.tries[b] = _count(self.hits[b], self.tries[b],
                                                 outcome(i, accepted, chances))
            if i < accepted and i + 1 < drafted:
                self.next_hits[b], self.next_tries[b] = _count(
                    self.next_hits[b], self.next_tries[b], outcome(i + 1, accepted, chances))

    def observe_gain(self, tokens: float) -> None:
        self.gain, self.gain_weight = running(self.gain, self.gain_weight, tokens, GAIN_WEIGHT)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "copies": self.copies.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LiveAcceptance:
        fields = dict(data)
        copies = CopyModel.from_dict(fields.pop("copies"))
        out = cls(**_floats(fields), copies=copies)
        n = len(ENTROPY_EDGES)
        if not (len(out.hits) == len(out.tries) == len(out.next_hits) == len(out.next_tries)
                == n):
            raise ValueError("live acceptance tables have the wrong shape")
        _check("acceptance counts", [*out.hits, *out.tries, *out.next_hits, *out.next_tries],
               0.0, ACCEPT_WEIGHT + PRIOR_WEIGHT)
        if any(h > t + 1e-9 for h, t in zip([*out.hits, *out.next_hits],
                                            [*out.tries, *out.next_tries], strict=True)) \
                or min(out.tries + out.next_tries) <= 0:
            raise ValueError("live acceptance counts: more hits than tries, or no tries")
        _check("gain", [out.gain], -MAX_GAIN, MAX_GAIN)
        _check("gain weight", [out.gain_weight], 0.0, GAIN_WEIGHT)
        _check("occupancy", out.occupancy, 0.0, 1.0)
        return out


def prior_accept(entropy: float, temperature: float) -> float:
    """Acceptance of a draft token of this entropy before anything was observed: the shape
    every calibration of the reference pair measured (two CPUs, SpecBench). Greedy, 0.9 at
    0.5 nats falling to 0.3 at 5; sampled, rejection sampling keeps a token the target
    would also often draw, so it falls more slowly (0.8 to 0.4) from a lower top. A guess
    too low here is never corrected: a token judged not worth drafting is never verified."""
    if temperature <= 0:
        return math.exp(-entropy / 4.0)
    return 0.85 * math.exp(-entropy / 6.0)


def prior_accept_next(entropy: float, temperature: float) -> float:
    """P(the next token is accepted | this one was, at this entropy), the same way."""
    if temperature <= 0:
        return 0.95 * math.exp(-entropy / 10.0)
    return 0.86 * math.exp(-entropy / 16.0)


# Share of draft steps in each entropy bin on the reference pair's SpecBench calibration
# traces (greedy, sampled): most steps are near-certain, so a flat average over the bins
# (0.70 greedy) says drafting loses where it wins (measured mean acceptance 0.84-0.86).
PRIOR_OCCUPANCY = ((0.38, 0.09, 0.06, 0.04, 0.06, 0.06, 0.08, 0.09, 0.07, 0.05, 0.02),
                   (0.23, 0.07, 0.06, 0.05, 0.05, 0.08, 0.09, 0.11, 0.11, 0.11, 0.04))


OCCUPANCY_WEIGHT = 8.0  # draft steps the prior occupancy counts for beside observed ones


def _seen_mean(hits: Sequence[float], tries: Sequence[float],
               occupancy: Sequence[float] = ()) -> float:
    """The rate hits / tries over the bins weighted by how often drafts fell in each: the
    observations (the prior's pseudo-counts left out), plus `occupancy` worth
    OCCUPANCY_WEIGHT steps (flat without), so one unlucky first step does not decide."""
    prior = occupancy if len(occupancy) == len(tries) else [1.0] * len(tries)
    scale = OCCUPANCY_WEIGHT / sum(prior)
    weights = [max(0.0, t - PRIOR_WEIGHT) + scale * o for t, o in zip(tries, prior,
                                                                      strict=True)]
    return sum(h / t * w for h, t, w in zip(hits, tries, weights, strict=True)) / sum(weights)


def _floats(data: dict[str, Any]) -> dict[str, Any]:
    """A stored table's fields as floats (lists of them), whatever JSON made of them."""
    return {k: (list(map(float, v)) if isinstance(v, list) else float(v))
            for k, v in data.items()}


def outcome(i: int, accepted: int, chances: Sequence[float]) -> float:
    """What tested token i counts as: its acceptance chance where known, else 1 if it was
    accepted (i < accepted) and 0 if it was the rejected one."""
    return chances[i] if i < len(chances) else float(i < accepted)


def _count(hits: float, tries: float, value: float) -> tuple[float, float]:
    """Add one outcome (1 accepted, 0 rejected, or a chance between); beyond ACCEPT_WEIGHT
    both counts shrink, so old text fades."""
    hits, tries = hits + value, tries + 1.0
    if tries > ACCEPT_WEIGHT:
        f = ACCEPT_WEIGHT / tries
        hits, tries = hits * f, ACCEPT_WEIGHT
    return hits, tries


def entropy_bin(h: float) -> int:
    return max(0, bisect_right(ENTROPY_EDGES, h) - 1)


def bin_centers() -> list[float]:
    edges = ENTROPY_EDGES
    return [(lo + hi) / 2 for lo, hi in zip(edges, edges[1:], strict=False)] + [edges[-1] + 1]


CONSTRAINED = "+grammar"  # the key suffix of acceptance learnt under a constraint


def temperature_key(temperature: float) -> str:
    """Acceptance is learnt per temperature, to 0.1 (0 is greedy)."""
    return f"{round(max(0.0, temperature), 1):g}"


@dataclass
class LiveModel:
    """The live estimates of one engine: costs for greedy and sampled generation (a sampled
    row or step draws from a distribution instead of taking an argmax), acceptance per
    temperature. `source` says where the priors came from."""

    costs: dict[str, LiveCosts]
    acceptance: dict[str, LiveAcceptance]
    source: str  # "calibration", "probe", "defaults", or "stored" (a previous session)
    calibration: Calibration | None = field(default=None, repr=False, compare=False)

    def costs_for(self, temperature: float) -> LiveCosts:
        key = "greedy" if temperature <= 0 else "sampled"
        if key not in self.costs:
            other = next(iter(self.costs.values()))
            self.costs[key] = LiveCosts.from_dict(other.to_dict())
        return self.costs[key]

    def acceptance_for(self, temperature: float, constrained: bool = False) -> LiveAcceptance:
        """What is known of acceptance at `temperature`; `constrained`: under a grammar, learnt
        apart (masked drafts are accepted more often), starting from free text's."""
        key = temperature_key(temperature)
        if constrained:
            if key + CONSTRAINED not in self.acceptance:
                free = self.acceptance_for(temperature)
                self.acceptance[key + CONSTRAINED] = LiveAcceptance.from_dict(free.to_dict())
            return self.acceptance[key + CONSTRAINED]
        if key not in self.acceptance:
            choice = None if self.calibration is None else self.calibration.choice_at(
                temperature)
            self.acceptance[key] = LiveAcceptance.prior(
                None if choice is None else choice.acceptance, temperature,
                None if choice is None else choice.copies)
        return self.acceptance[key]

    @classmethod
    def start(cls, costs: LiveCosts, source: str,
              calibration: Calibration | None = None) -> LiveModel:
        return cls({"greedy": costs}, {}, source, calibration)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "source": self.source,
                "costs": {k: v.to_dict() for k, v in self.costs.items()},
                "acceptance": {k: v.to_dict() for k, v in self.acceptance.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], calibration: Calibration | None = None
                  ) -> LiveModel:
        if data.get("format") != FORMAT:
            raise ValueError(f"live state format {data.get('format')!r}, expected {FORMAT}")
        costs = {str(k): LiveCosts.from_dict(v) for k, v in data["costs"].items()}
        if not costs:
            raise ValueError("live state without costs")
        return cls(costs, {str(k): LiveAcceptance.from_dict(v)
                           for k, v in data["acceptance"].items()}, "stored", calibration)


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Linear through (xs, ys), extended along the last segment's slope."""
    i = min(max(bisect_right(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))
