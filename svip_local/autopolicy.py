"""`--policy auto`: the policy calibrated for this pair on this machine, or a safe default."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from svip_local.policies import DraftPolicy, NoDraft, parse_policy

if TYPE_CHECKING:
    from svip_local.engine import Engine

log = logging.getLogger(__name__)

UNCALIBRATED_DEFAULT = "svip:0.3"


def resolve_policy(spec: str, engine: Engine) -> DraftPolicy:
    """Turn a policy spec into a policy for `engine` (auto included)."""
    if spec.strip().lower() != "auto":
        return parse_policy(spec, max_draft=engine.config.max_draft)
    if engine.draft_model is None:
        return NoDraft()
    log.warning("no calibration for this pair on this machine: auto uses %s "
                "(run `svip-local calibrate` to choose by measurement)", UNCALIBRATED_DEFAULT)
    return parse_policy(UNCALIBRATED_DEFAULT, max_draft=engine.config.max_draft)
