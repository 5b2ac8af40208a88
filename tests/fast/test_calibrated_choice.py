"""Which calibrated choice a generation runs: one answer (`Calibration.choice_at`) for
`calibrated`, `auto` and the cost-aware rules, on files from before sampled choices too."""

from __future__ import annotations

import numpy as np
import pytest

from svip_local.calibration import (
    AcceptanceHead,
    AcceptanceMap,
    Calibration,
    Fingerprint,
    PairIdentity,
    TemperatureChoice,
)
from svip_local.policies import CostAwareSvip, Expander, PolicyContext, parse_policy
from svip_local.sampling import SamplingParams
from tests.support.sim import make_costs

AMAP = AcceptanceMap((0.0, 1.0), (0.9, 0.5), (0.8, 0.4))
GREEDY = "specdec:0.5+cape:16+lookup:2:4"
SAMPLED = {0.7: "svip:0.3+cape:8", 1.0: "specdec-cost:9"}


def head(temperature: float) -> AcceptanceHead:
    z = np.zeros((1, 1), np.float32)
    return AcceptanceHead(temperature, z, np.zeros((4, 1), np.float32),
                          np.zeros(1, np.float32), [], z)


def stored(sampled: dict[float, str], *, old: bool) -> Calibration:
    """The calibration `store.load` gives back (greedy rate 12.5, sampled 8), with a head per
    temperature; an `old` file has neither `sampled` nor the greedy choice's temperature."""
    cal = Calibration(PairIdentity("t.gguf", 1, "d.gguf", 1), Fingerprint("cpu", "cpu", "0/0", 1),
                      TemperatureChoice(0.0, GREEDY, AMAP, 12.5),
                      make_costs(lambda b: 0.1 + 0.01 * b),
                      [TemperatureChoice(t, c, AMAP, 8.0) for t, c in sampled.items()])
    data = cal.to_dict()
    if old:
        del data["sampled"], data["temperature"]
    loaded = Calibration.from_dict(data)
    loaded.attach_heads([head(0.0), *map(head, sampled)])
    return loaded


def name(expander: Expander | None) -> str | None:
    return None if expander is None else expander.name


# temperature: (what `calibrated` runs, the drafting rounds' expander, the head's temperature,
# svip-cost's rate)
NEW = {0.0: (GREEDY, "cape:16", 0.0, 12.5), 0.5: ("svip:0.3+cape:8", "cape:8", None, 8.0),
       1.0: ("specdec-cost:9", None, 1.0, 8.0)}
# Sampling borrows the greedy choice's length policy alone: greedy traces priced its copies
# and tree (`auto` once widened sampled rounds with that tree all the same).
OLD = {0.0: (GREEDY, "cape:16", 0.0, 12.5), 0.5: (GREEDY, "cape:16", 0.0, 12.5),
       1.0: ("specdec:0.5", None, 0.0, 12.5)}


@pytest.mark.parametrize(("old", "expected"), [(False, NEW), (True, OLD)])
def test_calibrated_and_auto_run_the_same_calibrated_choice(
        old: bool, expected: dict[float, tuple[str, str | None, float | None, float]]) -> None:
    cal = stored({} if old else SAMPLED, old=old)
    context = PolicyContext(calibration=lambda: cal)
    calibrated, auto, svip_cost = (parse_policy(s, context)
                                   for s in ("calibrated", "auto", "svip-cost"))
    for t, (spec, expander, head_temperature, rate) in expected.items():
        sampling = SamplingParams(temperature=t)
        fixed, live = calibrated.for_sampling(sampling), auto.for_sampling(sampling)
        assert fixed.name == spec, t
        assert name(fixed.expander) == name(live.expander) == expander, t
        fixed_head = getattr(fixed.policy, "head", None)
        assert live.policy.head is fixed_head, t  # type: ignore[attr-defined]
        assert (None if fixed_head is None else fixed_head.temperature) == head_temperature
        cost_aware = svip_cost.for_sampling(sampling).policy
        assert isinstance(cost_aware, CostAwareSvip) and cost_aware.rate == rate, t
