"""Policy specs that depend on this machine: `auto` and `svip-cost`.

`auto` uses the choices `svip-local calibrate` stored for this pair's files on this machine
(CPU, GPU, offload, threads), one per calibrated sampling temperature — possibly `none`, where
speculation does not pay. Without a calibration it falls back to a default that cannot go far
wrong, and says so: the target alone on a CPU-only run (a verification batch there costs nearly
as much per token as single decodes, so speculation usually loses), SVIP with the paper's h
where layers are offloaded to a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from svip_local.bench import store
from svip_local.bench.costs import CostModel, PairIdentity, fingerprint, gpu_name
from svip_local.bench.store import TemperatureChoice
from svip_local.errors import InvalidRequestError
from svip_local.lookup import split_lookup
from svip_local.policies import DraftPolicy, NoDraft, PerTemperature, parse_policy, with_lookup
from svip_local.policies_cost import parse_cost_policy

if TYPE_CHECKING:
    from svip_local.engine import Engine

log = logging.getLogger(__name__)

CPU_DEFAULT = "none"
GPU_DEFAULT = "svip:0.3"
COST_POLICY = "svip-cost"


def resolve_policy(spec: str, engine: Engine) -> DraftPolicy:
    """Turn a policy spec into a policy for `engine` (auto and svip-cost included, each
    optionally with `+lookup`: an explicit lookup applies at every temperature)."""
    base, lookup = split_lookup(spec)
    return with_lookup(_resolve_base(base, engine), lookup)


def _resolve_base(spec: str, engine: Engine) -> DraftPolicy:
    name = spec.strip().lower().partition(":")[0]
    max_draft = engine.config.max_draft
    if name == "auto":
        if engine.draft_model is None:
            return NoDraft()
        cal = calibration_for(engine)
        if cal is None:
            default = uncalibrated_default(engine)
            log.warning("no calibration for this pair on this machine: auto uses %s (run "
                        "`svip-local calibrate` to choose by measurement)", default)
            return parse_policy(default, max_draft=max_draft)
        return per_temperature(cal, lambda c: c.choice, max_draft=max_draft)
    if name == COST_POLICY:
        cal = calibration_for(engine) if engine.draft_model is not None else None
        if cal is None:
            raise InvalidRequestError(
                "svip-cost needs this machine's costs for this pair: run `svip-local "
                "calibrate` first (with the same files, threads and GPU offload)")
        return per_temperature(cal, lambda _c: spec, max_draft=max_draft)
    return parse_policy(spec, max_draft=max_draft)


def per_temperature(cal: store.Calibration, spec_at: Callable[[TemperatureChoice], str], *,
                    max_draft: int) -> DraftPolicy:
    """The policy `spec_at` names for each temperature the calibration covers, switched as
    each generation starts (`PerTemperature`)."""
    return PerTemperature([(c.temperature, policy_from_calibration(spec_at(c), cal.costs, c,
                                                                   max_draft=max_draft))
                           for c in temperature_choices(cal)])


def temperature_choices(cal: store.Calibration) -> list[TemperatureChoice]:
    """The calibration's choices by temperature. A calibration made before sampled traces
    chose on greedy ones only; sampling then runs its choice without prompt lookup (a copy is
    accepted only with the target's probability of it, which greedy traces do not measure)."""
    if cal.sampled:
        return [cal.greedy, *cal.sampled]
    base, _ = split_lookup(cal.greedy.choice)
    return [cal.greedy, replace(cal.greedy, temperature=1.0, choice=base)]


def policy_from_calibration(spec: str, costs: CostModel, at: TemperatureChoice, *,
                            max_draft: int) -> DraftPolicy:
    """A stored choice (or an explicit svip-cost spec) as a policy, with the machine's costs
    and the acceptance map of the temperature `at` where the policy needs them."""
    base, lookup = split_lookup(spec)
    if base.strip().lower().partition(":")[0] == COST_POLICY:
        policy: DraftPolicy = parse_cost_policy(base, costs, at.acceptance, at.cost_rate,
                                                max_draft=max_draft)
    else:
        policy = parse_policy(base, max_draft=max_draft)
    return with_lookup(policy, lookup)


def calibration_for(engine: Engine) -> store.Calibration | None:
    assert engine.draft_model is not None
    pair = PairIdentity.of(engine.target_model.path, engine.draft_model.path)
    return store.load(pair, fingerprint(engine))


def uncalibrated_default(engine: Engine) -> str:
    offloaded = gpu_name() != "cpu" and engine.config.n_gpu_layers != 0
    return GPU_DEFAULT if offloaded else CPU_DEFAULT
