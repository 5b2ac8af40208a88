"""What one benchmark produced, and the lookups its markdown report and its plots share.

Its own module so that `plots` stands on it rather than on `report`, which writes the plots.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from svip_local.bench import peer, python_peer
from svip_local.bench.prompts import CATEGORIES
from svip_local.bench.runner import CALIBRATED_AUTO, RunRecord, Summary
from svip_local.bench.traces import PromptTrace
from svip_local.bench.validate import ORACLE, Check
from svip_local.policies import label as policy_label

OVERALL = "all"


@dataclass
class BenchResult:
    """Everything one `svip-local bench` produced."""

    meta: dict[str, Any]
    records: list[RunRecord]
    predicted: list[RunRecord]
    summaries: list[Summary]  # measured and simulated (Summary.simulated)
    checks: list[Check]
    policies: list[str]  # benchmark order (the peer's best setting included)
    peer_sweep: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    traces: list[PromptTrace] = field(default_factory=list)
    # Per temperature, how well each rule predicts acceptance on these traces' prompts,
    # held out by folds (`bench.predictors.compare`).
    predictors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "policies": self.policies,
                "summaries": [s.to_dict() for s in self.summaries],
                "validation": [c.to_dict() for c in self.checks],
                "peer_sweep": self.peer_sweep, "calibration": self.calibration,
                "acceptance_by_entropy": entropy_bins(self.traces),
                "acceptance_prediction": self.predictors,
                "records": [r.to_dict() for r in self.records],
                "predicted": [r.to_dict() for r in self.predicted]}


def label(policy: str, resolved: str = "") -> str:
    """How a policy spec (or the oracle, or llama.cpp's binary) reads in a table."""
    if policy == ORACLE:
        return "oracle (simulated)"
    if policy == CALIBRATED_AUTO:
        return "auto, from the calibration"
    if peer.handles(policy):
        return peer.label(policy)
    if python_peer.handles(policy):
        return resolved or policy
    return policy_label(policy, resolved)


def table_groups(rows: Iterable[Summary | Check], suite: str) -> list[str]:
    """The groups present, in table order: categories as the paper, lengths ascending."""
    present = {s.group for s in rows} - {OVERALL}
    if suite == "specbench":
        ordered = [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))
    else:
        ordered = sorted(present, key=lambda g: (int(g), "") if g.isdigit() else (math.inf, g))
    return [*ordered, OVERALL]


def ordered_policies(result: BenchResult, rows: Sequence[Summary]) -> list[str]:
    """The policies of `rows` in benchmark order, the oracle last."""
    present = {s.policy for s in rows}
    return [p for p in [*result.policies, ORACLE] if p in present]


def find_summary(rows: Sequence[Summary], policy: str, group: str,
                 simulated: bool) -> Summary | None:
    """The row of `policy` on `group`, measured or simulated (None where there is none)."""
    return next((s for s in rows if s.policy == policy and s.group == group
                 and s.simulated == simulated), None)


def resolved_name(rows: Sequence[Summary], policy: str) -> str:
    """What `policy` resolved to over all prompts ('' where it has no overall row)."""
    s = next((r for r in rows if r.policy == policy and r.group == OVERALL), None)
    return s.resolved if s else ""


def entropy_bins(traces: Sequence[PromptTrace], bins: int = 12) -> list[dict[str, float]]:
    """Mean acceptance of a draft token per draft-entropy bin (quantile bins), per
    temperature: greedily whether the draft's argmax is the target's token, sampled the
    chance rejection sampling accepts there."""
    rows = []
    for temp in sorted({t.temperature for t in traces}):
        same = [t for t in traces if t.temperature == temp]
        ent = np.concatenate([t.entropy[:t.generated] for t in same])
        acc = np.concatenate([t.acceptance[:t.generated] for t in same])
        if len(ent) == 0:
            continue
        edges = np.unique(np.quantile(ent, np.linspace(0, 1, bins + 1)))
        for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            sel = (ent >= lo) & ((ent <= hi) if i == len(edges) - 2 else (ent < hi))
            if sel.any():
                rows.append({"temperature": temp, "entropy": float(np.median(ent[sel])),
                             "acceptance": float(acc[sel].mean()), "n": int(sel.sum())})
    return rows

