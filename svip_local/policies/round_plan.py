"""What a strategy decides for one round, before the round runs: the round reads this plan
top to bottom (`round.Speculator.round`), and the simulator replays the same plans."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from svip_local.calibration.copies import CopyEvidence


@dataclass(frozen=True, slots=True)
class Copy:
    """Tokens to verify that need no draft step: a chain, or a tree when `parents` gives
    each node's parent (-1: the round's root). `evidence`: what the copy was priced by
    (the live `auto`'s copies), `source`: where in the transcript the chain's text starts."""

    tokens: Sequence[int] | npt.NDArray[np.integer[Any]]
    parents: Sequence[int] | None = None
    evidence: CopyEvidence | None = None
    source: int = -1


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """Copy `copy`, or draft up to `draft` tokens with the strategy's length policy, or
    neither (the target alone). `explore`: a round the strategy's estimates say loses, run
    to learn (an exploring draft keeps its first token whatever the length rule says);
    `why`: the reason in a few words."""

    arm: str = "none"  # "none" | "lookup" (a copy) | "draft"
    copy: Copy | None = None
    draft: int = 0
    explore: bool = False
    why: str = ""


ALONE = RoundPlan(why="the target alone")
