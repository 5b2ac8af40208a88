"""SpecDec++'s stopping rule on a head learnt from this pair's traces (`calibration.head`).

`specdec[:h]`: after each draft step the head predicts the chance the token is accepted; with
P_n the product over the round's tokens so far (all accepted), stop once the chance that the
round holds a rejection, 1 - P_n, exceeds h, keeping the token (SpecDec++, Theorem 3.1: a
threshold on that chance is the optimal stopping rule). SpecDec++'s code reads each token's
chance one step late, from the hidden state that takes the token as input, so its rounds carry
one unjudged token more; here the head reads the state the token was drafted from, which
greedily determines it, so the rule judges every token it keeps.

`specdec-cost[:R]`: cost-aware SVIP's rule (`svip-cost`) fed by the head instead of the entropy
map: keep a token while its chance of being accepted pays for its verification row, draft
another while that one's chance (the head's second output) pays for its draft step and row.

Both need `svip-local calibrate` (which trains the head, one per temperature, and chooses h
and R by simulation on the same traces) and turn on the draft context's hidden-state output.
"""

from __future__ import annotations

from svip_local.calibration import AcceptanceMap, CostModel, TemperatureChoice
from svip_local.calibration.head import AcceptanceHead
from svip_local.config import DEFAULT_MAX_DRAFT
from svip_local.errors import InvalidRequestError
from svip_local.policies.auto import per_calibrated_choice
from svip_local.policies.base import DraftPolicy, StepStats, Verdict
from svip_local.policies.cost import RATE, CostAwareSvip
from svip_local.policies.strategy import Plan
from svip_local.policies.table import Param, PolicyContext, register

DEFAULT_THRESHOLD = 0.5  # where a calibration has a head but chose no threshold


@register("specdec", Param("h", float, None, "stop once P(a rejection in the round) > h "
                                             "(default: the calibrated threshold)",
                           low=0, high=1),
          rule="SpecDec++: keep the token, then stop once the learnt head says the round "
               "holds a rejection with chance > h (needs `svip-local calibrate`)",
          label="SpecDec++ ({resolved})", grid=(), needs_calibration=True)
class SpecDec(DraftPolicy):
    """Stop once 1 - prod(predicted acceptance) > h (see module)."""

    wants_entropy = True
    wants_top_prob = True
    wants_hidden = True

    def __init__(self, head: AcceptanceHead, h: float, *,
                 max_draft: int = DEFAULT_MAX_DRAFT) -> None:
        if not 0 < h < 1:
            raise InvalidRequestError(f"specdec threshold h must be in (0, 1), got {h}")
        super().__init__(h, max_draft=max_draft)
        self.head, self.h = head, h
        self._p = 1.0

    def judge(self, step: StepStats) -> Verdict:
        if step.n_drafted == 1:
            self._p = 1.0
        assert step.hidden is not None, "specdec reads the draft's hidden state"
        self._p *= self.head.predict(step.hidden, step.entropy, step.top_prob)[0]
        return Verdict.STOP if 1.0 - self._p > self.h else Verdict.CONTINUE

    @classmethod
    def build(cls, args: tuple[float | None, ...], context: PolicyContext
              ) -> SpecDec | Plan:
        (h,) = args
        return per_calibrated_choice(context, "specdec", lambda c, cal: cls(
            head_at(c, "specdec"), h or c.head_threshold or DEFAULT_THRESHOLD,
            max_draft=context.max_draft))


@register("specdec-cost", RATE,
          rule="cost-aware SVIP's rule on the learnt head's chances instead of the entropy "
               "map (needs `svip-local calibrate`)",
          label="cost-aware SpecDec++ ({resolved})", grid=(), needs_calibration=True)
class CostAwareSpecDec(CostAwareSvip):
    """`svip-cost` with the head's two chances (see module)."""

    wants_top_prob = True
    wants_hidden = True

    def __init__(self, costs: CostModel, acceptance: AcceptanceMap, rate: float,
                 head: AcceptanceHead, *, max_draft: int = DEFAULT_MAX_DRAFT) -> None:
        super().__init__(costs, acceptance, rate, max_draft=max_draft)
        self.read_head(head)

    @classmethod
    def build(cls, args: tuple[float | None, ...], context: PolicyContext
              ) -> CostAwareSpecDec | Plan:
        (rate,) = args
        return per_calibrated_choice(context, "specdec-cost", lambda c, cal: cls(
            cal.costs, c.acceptance, rate or c.head_rate or c.cost_rate,
            head_at(c, "specdec-cost"), max_draft=context.max_draft))


def head_at(choice: TemperatureChoice, name: str) -> AcceptanceHead:
    """The head trained at `choice`'s temperature, or an error that says why there is none."""
    if choice.head is None:
        raise InvalidRequestError(
            f"{name} needs an acceptance head at temperature {choice.temperature:g}, and this "
            "pair's calibration has none there (made before acceptance heads, or its head "
            "file is missing or was trained for other files): run `svip-local calibrate` "
            "again")
    return choice.head
