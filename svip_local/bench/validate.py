"""The simulator against the stopwatch: predicted runs for the same items, policies and
temperatures as a benchmark, and the error of each prediction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from svip_local.bench.runner import BenchItem, RunRecord, Summary
from svip_local.bench.simulate import SimResult, oracle, realise_all, simulate
from svip_local.bench.traces import PromptTrace
from svip_local.calibration import CostModel
from svip_local.policies import Plan
from svip_local.sampling import SamplingParams

ORACLE = "oracle"


def predict(items: Sequence[BenchItem], traces: Sequence[PromptTrace], specs: Sequence[str],
            make_policy: Callable[[str], Plan], costs: CostModel, *, max_draft: int,
            max_copy: int) -> list[RunRecord]:
    """Simulated runs of `specs` (one policy object each per temperature, over the items in
    benchmark order) and of the oracle, on the items that have a trace at that temperature.
    A sampled trace is replayed on several realisations, recorded as repeats."""
    by_key = {(t.prompt_id, t.temperature): t for t in traces}
    out = []
    for temp in sorted({t.temperature for t in traces}):
        present = [item for item in items if (item.key, temp) in by_key]
        replay = realise_all([by_key[item.key, temp] for item in present])
        runs = [(present[i % len(present)], i // len(present), trace)
                for i, trace in enumerate(replay)]
        for spec in specs:
            plan = make_policy(spec)
            strategy = plan.for_sampling(SamplingParams(temperature=temp))
            for item, draw, trace in runs:
                res = simulate(trace, plan, costs)
                out.append(_record(item, trace, draw, spec, strategy.describe(), res))
        for item, draw, trace in runs:
            out.append(_record(item, trace, draw, ORACLE, ORACLE,
                               oracle(trace, costs, max_draft=max_draft,
                                      max_copy=max_copy)))
    return out


def _record(item: BenchItem, trace: PromptTrace, draw: int, spec: str, resolved: str,
            res: SimResult) -> RunRecord:
    return RunRecord(item.suite, item.group, item.prompt.id, trace.temperature,
                     item.max_tokens, spec, resolved, draw, res.generated, res.time_s,
                     res.prefill_s, res.drafted, res.accepted, res.draft_lengths,
                     res.accepted_lengths, res.rounds, trace.finish, simulated=True,
                     node_counts=res.node_counts)


@dataclass(frozen=True)
class Check:
    """Predicted vs measured speed of one policy on one group at one temperature."""

    suite: str
    group: str
    temperature: float
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
    pred = {(s.suite, s.group, s.temperature, s.policy): s for s in predicted}
    checks = []
    for m in measured:
        p = pred.get((m.suite, m.group, m.temperature, m.policy))
        if p is not None and not m.simulated:
            checks.append(Check(m.suite, m.group, m.temperature, m.policy, p.total_tps,
                                m.total_tps, p.mean_tps, m.mean_tps))
    return checks
