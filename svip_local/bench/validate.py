"""The simulator against the stopwatch: predicted runs for the same items and policies as a
greedy benchmark, and the error of each prediction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from svip_local.bench.costs import CostModel
from svip_local.bench.runner import BenchItem, RunRecord, Summary
from svip_local.bench.simulate import SimResult, oracle, simulate
from svip_local.bench.traces import PromptTrace
from svip_local.policies import DraftPolicy

ORACLE = "oracle"


def predict(items: Sequence[BenchItem], traces: Sequence[PromptTrace], specs: Sequence[str],
            make_policy: Callable[[str], DraftPolicy], costs: CostModel, *, max_draft: int
            ) -> list[RunRecord]:
    """Simulated greedy runs of `specs` (one policy object each, over the items in benchmark
    order) and of the oracle, on the items that have a trace."""
    by_key = {t.prompt_id: t for t in traces}
    pairs = [(item, by_key[item.key]) for item in items if item.key in by_key]
    out = []
    for spec in specs:
        policy = make_policy(spec)
        for item, trace in pairs:
            res = simulate(trace, policy, costs, max_draft=max_draft)
            out.append(_record(item, trace, spec, policy.describe(), res))
    for item, trace in pairs:
        out.append(_record(item, trace, ORACLE, ORACLE, oracle(trace, costs,
                                                               max_draft=max_draft)))
    return out


def _record(item: BenchItem, trace: PromptTrace, spec: str, resolved: str, res: SimResult
            ) -> RunRecord:
    return RunRecord(item.suite, item.group, item.prompt.id, 0.0, item.max_tokens, spec,
                     resolved, 0, res.generated, res.time_s, res.prefill_s, res.drafted,
                     res.accepted, res.draft_lengths, res.accepted_lengths, res.rounds,
                     trace.finish, simulated=True)


@dataclass(frozen=True)
class Check:
    """Predicted vs measured speed of one policy on one group (greedy)."""

    suite: str
    group: str
    policy: str
    predicted_tps: float  # total tokens / total time
    measured_tps: float
    predicted_mean_tps: float  # mean of per-prompt rates
    measured_mean_tps: float

    @property
    def error(self) -> float:
        """Relative error of the total rate: +0.05 = predicted 5% faster than measured."""
        return self.predicted_tps / self.measured_tps - 1 if self.measured_tps else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error": self.error}


def compare(measured: Sequence[Summary], predicted: Sequence[Summary]) -> list[Check]:
    pred = {(s.suite, s.group, s.policy): s for s in predicted if s.temperature == 0}
    checks = []
    for m in measured:
        p = pred.get((m.suite, m.group, m.policy))
        if m.temperature == 0 and p is not None and not m.simulated:
            checks.append(Check(m.suite, m.group, m.policy, p.total_tps, m.total_tps,
                                p.mean_tps, m.mean_tps))
    return checks
