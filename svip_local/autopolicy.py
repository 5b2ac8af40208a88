"""Policy specs that depend on this machine: `auto` and `svip-cost`.

`auto` uses the choice `svip-local calibrate` stored for this pair's files on this machine
(CPU, GPU, offload, threads) — possibly `none`, where speculation does not pay. Without a
calibration it falls back to a default that cannot go far wrong, and says so: the target alone
on a CPU-only run (a verification batch there costs nearly as much per token as single decodes,
so speculation usually loses), SVIP with the paper's h where layers are offloaded to a GPU.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from svip_local.bench import store
from svip_local.bench.costs import PairIdentity, fingerprint, gpu_name
from svip_local.errors import InvalidRequestError
from svip_local.lookup import split_lookup
from svip_local.policies import DraftPolicy, NoDraft, parse_policy, with_lookup
from svip_local.policies_cost import parse_cost_policy

if TYPE_CHECKING:
    from svip_local.engine import Engine

log = logging.getLogger(__name__)

CPU_DEFAULT = "none"
GPU_DEFAULT = "svip:0.3"
COST_POLICY = "svip-cost"


def resolve_policy(spec: str, engine: Engine) -> DraftPolicy:
    """Turn a policy spec into a policy for `engine` (auto and svip-cost included, each
    optionally with `+lookup`: an explicit lookup replaces the one a calibration chose)."""
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
        base, lookup = split_lookup(cal.choice)
        # Copies were chosen on greedy traces: see WithLookup.greedy_only.
        return with_lookup(policy_from_calibration(base, cal, max_draft=max_draft), lookup,
                           greedy_only=True)
    if name == COST_POLICY:
        cal = calibration_for(engine) if engine.draft_model is not None else None
        if cal is None:
            raise InvalidRequestError(
                "svip-cost needs this machine's costs for this pair: run `svip-local "
                "calibrate` first (with the same files, threads and GPU offload)")
        return policy_from_calibration(spec, cal, max_draft=max_draft)
    return parse_policy(spec, max_draft=max_draft)


def policy_from_calibration(spec: str, cal: store.Calibration, *, max_draft: int
                            ) -> DraftPolicy:
    """A stored choice (or an explicit svip-cost spec) as a policy, using the calibration's
    costs and acceptance map where the policy needs them."""
    base, lookup = split_lookup(spec)
    if base.strip().lower().partition(":")[0] == COST_POLICY:
        policy: DraftPolicy = parse_cost_policy(base, cal.costs, cal.acceptance, cal.cost_rate,
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
