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

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from svip_local.calibration import AcceptanceHead, AcceptanceMap, CostModel
from svip_local.config import DEFAULT_MAX_DRAFT
from svip_local.errors import InvalidRequestError
from svip_local.policies.auto import per_calibrated_choice
from svip_local.policies.base import DraftPolicy, StepStats, Verdict
from svip_local.policies.table import Param, PolicyContext, register

if TYPE_CHECKING:
    from svip_local.policies.strategy import Plan


# R of the cost-aware rules (svip-cost, specdec-cost).
RATE = Param("R", float, None, "tokens/s one more token must beat (default: the calibrated "
                               "rate)", fmt=".4g", low=0)


@register("svip-cost", RATE,
          rule="cost-aware SVIP: draft one more token only while its acceptance chance pays "
               "for its cost on this machine (needs `svip-local calibrate`)",
          label="cost-aware SVIP ({resolved})", grid=(), needs_calibration=True)
class CostAwareSvip(DraftPolicy):
    """Entropy-driven like SVIP, but stops where one more token no longer pays (see module)."""

    wants_entropy = True

    def __init__(self, costs: CostModel, acceptance: AcceptanceMap, rate: float, *,
                 max_draft: int = DEFAULT_MAX_DRAFT) -> None:
        if not rate > 0:
            raise InvalidRequestError(f"svip-cost rate must be positive tokens/s, got {rate}")
        super().__init__(rate, max_draft=max_draft)
        d = costs.base_depth
        self._p = 1.0
        self.head: AcceptanceHead | None = None
        self.set_prices([costs.verify(b, d) for b in range(1, max_draft + 3)],
                        costs.draft(1, d) + costs.step_s + costs.argmax_s + costs.entropy_s,
                        acceptance, rate)

    def set_prices(self, verify: Sequence[float], step_s: float, acceptance: AcceptanceMap,
                   rate: float) -> None:
        """Price the rule: `verify[b-1]` seconds to verify b tokens (b up to max_draft + 2),
        `step_s` per draft step, acceptance chances from `acceptance`, and the rate R. The
        live `auto` calls this each round with what it has just learnt."""
        self.acceptance = acceptance
        self.rate = rate
        # keep[n]: extra verification cost of the n-th draft token (index 0 unused).
        self._keep = [0.0] + [max(0.0, verify[n] - verify[n - 1])
                              for n in range(1, self.max_draft + 2)]
        self._step = step_s

    def read_head(self, head: AcceptanceHead | None) -> None:
        """Take the chances from a learnt acceptance head (`specdec-cost`, and the live
        `auto` where the calibration chose it) instead of the entropy map; None: the map."""
        self.head = head
        self.wants_hidden = head is not None

    def chances(self, step: StepStats) -> tuple[float, float]:
        """P(this token accepted | the ones before were), and P(the next one accepted | this
        one is): from the learnt head where it reads one, else the entropy map."""
        if self.head is not None:
            assert step.hidden is not None, "the acceptance head reads the hidden state"
            return self.head.predict(step.hidden, step.entropy, step.top_prob)
        return (self.acceptance.accept(step.entropy),
                self.acceptance.accept_next(step.entropy))

    def judge(self, step: StepStats) -> Verdict:
        n = step.n_drafted
        if n == 1:
            self._p = 1.0
        now, after = self.chances(step)
        p = self._p * now
        if p < self.rate * self._keep[n]:
            return Verdict.DROP
        self._p = p
        if p * after < self.rate * (self._step + self._keep[n + 1]):
            return Verdict.STOP
        return Verdict.CONTINUE

    @classmethod
    def build(cls, args: tuple[Any, ...], context: PolicyContext) -> CostAwareSvip | Plan:
        """With this machine's costs and, at each calibrated temperature, that temperature's
        acceptance map and rate (an explicit R replaces the rate everywhere)."""
        (rate,) = args
        return per_calibrated_choice(context, "svip-cost", lambda c, cal: cls(
            cal.costs, c.acceptance, rate or c.cost_rate, max_draft=context.max_draft))
