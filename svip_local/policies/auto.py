"""`calibrated`: the strategy `svip-local calibrate` chose for this pair on this machine, fixed.

It uses the stored choices for this pair's files on this machine (CPU, GPU, offload,
threads), one per calibrated sampling temperature — possibly `none`, where speculation does
not pay. `auto` (`policies.live`) chooses round by round instead; this is the calibrated
snapshot it is measured against, and the helpers here read a calibration's choices for both
and for `svip-cost`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from svip_local.calibration import Calibration, TemperatureChoice
from svip_local.errors import InvalidRequestError
from svip_local.policies.base import DraftPolicy
from svip_local.policies.rules import NoDraft
from svip_local.policies.strategy import PerTemperature, Plan, Strategy, parse_policy
from svip_local.policies.table import PolicyContext, register, split_spec
from svip_local.sampling import SamplingParams


@register("calibrated", rule="the choice `svip-local calibrate` made for this pair on this "
                             "machine, fixed, at the calibrated temperature nearest the "
                             "generation's (needs `svip-local calibrate`)",
          label="calibrated (→ {resolved})", grid=(), needs_calibration=True)
def calibrated(args: tuple[Any, ...], context: PolicyContext) -> Plan:
    if context.temperature is not None:
        raise InvalidRequestError("a calibrated choice cannot be `calibrated` itself: run "
                                  "`svip-local calibrate` again")
    if not context.has_draft:
        return Strategy(NoDraft(max_draft=context.max_draft))
    cal = context.calibration()
    if cal is None:
        raise InvalidRequestError(
            "`calibrated` needs this pair's calibration on this machine: run `svip-local "
            "calibrate` first (with the same files, threads and GPU offload), or use `auto`")
    return per_temperature(cal, context)


def per_temperature(cal: Calibration, context: PolicyContext) -> PerTemperature:
    """The strategy each calibrated choice names, at its temperature, each built with that
    temperature's acceptance map and rate where it needs them."""
    return PerTemperature([
        (c.temperature,
         parse_policy(choice_spec(c), replace(context, temperature=c.temperature))
         .for_sampling(SamplingParams(temperature=c.temperature)))
        for c in cal.choices])


def choice_spec(choice: TemperatureChoice) -> str:
    """The spec a calibrated choice runs. A greedy choice lent to sampling (a calibration
    without sampled choices) runs its length policy alone: a copy or a tree's leaf is accepted
    only with the target's probability of it, which greedy traces do not measure."""
    if not choice.lent:
        return choice.choice
    known, args = split_spec(choice.choice).policy
    return known.spec(args)


P = TypeVar("P", bound=DraftPolicy)


def per_calibrated_choice(context: PolicyContext, name: str,
                          make: Callable[[TemperatureChoice, Calibration], P]) -> P | Plan:
    """A policy fitted to the calibration (`svip-cost`, `specdec`): `make(choice, cal)` at
    the context's temperature, or one per calibrated temperature; a clear error without a
    calibration."""
    cal = context.calibration() if context.has_draft else None
    if cal is None:
        raise InvalidRequestError(
            f"{name} needs this machine's costs for this pair: run `svip-local calibrate` "
            "first (with the same files, threads and GPU offload)")
    if context.temperature is not None:
        return make(cal.choice_at(context.temperature), cal)
    return PerTemperature([(c.temperature, Strategy(make(c, cal))) for c in cal.choices])
