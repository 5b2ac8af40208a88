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
from svip_local.policies.strategy import PerTemperature, Plan, Strategy
from svip_local.policies.table import PolicyContext, parse_policy, register, split_spec
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
    return per_temperature(cal, lambda c: c.choice, context)


def per_temperature(cal: Calibration, spec_at: Callable[[TemperatureChoice], str],
                    context: PolicyContext) -> PerTemperature:
    """The strategy `spec_at` names for each temperature the calibration covers, each built
    with that temperature's acceptance map and rate where it needs them."""
    return PerTemperature([
        (c.temperature, parse_policy(spec_at(c), replace(context, temperature=c.temperature))
         .for_sampling(SamplingParams(temperature=c.temperature)))
        for c in temperature_choices(cal)])


def temperature_choices(cal: Calibration) -> list[TemperatureChoice]:
    """The calibration's choices by temperature. A calibration made before sampled traces
    chose on greedy ones only; sampling then runs its choice without its proposal source (a
    copy is accepted only with the target's probability of it, which greedy traces do not
    measure)."""
    if cal.sampled:
        return [cal.greedy, *cal.sampled]
    parsed = split_spec(cal.greedy.choice)
    known, args = parsed.policy
    return [cal.greedy, replace(cal.greedy, temperature=1.0, choice=known.spec(args))]


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
        return make(choice_at(cal, context.temperature), cal)
    return PerTemperature([(c.temperature, Strategy(make(c, cal)))
                           for c in temperature_choices(cal)])


def choice_at(cal: Calibration, temperature: float) -> TemperatureChoice:
    """The calibrated choice nearest `temperature`."""
    return min(temperature_choices(cal), key=lambda c: abs(c.temperature - temperature))
