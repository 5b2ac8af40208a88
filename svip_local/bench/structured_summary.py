"""The structured benchmark's numbers per contestant, per task kind and over all tasks: speed
against the constrained and the unconstrained target alone, how many replies finished and
validated, the forced-token share, acceptance, the mask's cost, and the cost model's
prediction."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from svip_local.bench.runner import SHARE
from svip_local.bench.structured_records import BASELINE, FREE_BASELINE, StructuredRecord
from svip_local.bench.structured_tasks import KINDS

OVERALL = "all"
# Each aid's gain: the contestant with it over the same one without it.
GAINS = (("forced tokens", "", "no-forced"), ("draft mask", "", "no-mask"),
         ("both aids", "", "bare"))


@dataclass(frozen=True)
class StructuredSummary:
    """One contestant on one kind of task (or all) at one temperature."""

    temperature: float
    group: str  # a task kind, or "all"
    contestant: str
    resolved: str
    runs: int
    mean_tps: float  # mean of per-run tokens/s, prefill included
    speedup: float | None  # over the constrained target alone on the same runs
    speedup_free: float | None  # over the unconstrained target alone on the same runs
    stop_rate: float  # replies that ended by themselves (not at max_tokens)
    valid_rate: float | None  # of those, the share that validates (None: none finished)
    invalid: int
    forced_share: float  # accepted forced tokens / generated tokens
    acceptance: float  # accepted / proposed, forced tokens included
    draft_acceptance: float | None  # the same without the forced tokens
    mask_ms_per_token: float
    predicted_tps: float | None  # mean of per-run predicted tokens/s
    prediction_error: float | None  # predicted total time rate / measured - 1
    # The cost model's speedup over the constrained target alone's, both predicted for the
    # rounds they ran: what the simulator says the forced tokens, copies and drafts buy.
    predicted_speedup: float | None
    decode_tps: float  # mean of per-run tokens/s of decoding (prefill excluded)
    decode_ratio_free: float | None  # decode_tps over the unconstrained target alone's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(records: Sequence[StructuredRecord]) -> list[StructuredSummary]:
    """Per (temperature, kind, contestant), and per (temperature, "all", contestant)."""
    groups: dict[tuple[float, str, str], list[StructuredRecord]] = defaultdict(list)
    for rec in records:
        groups[(rec.temperature, rec.kind, rec.contestant)].append(rec)
        groups[(rec.temperature, OVERALL, rec.contestant)].append(rec)
    out = []
    for (temp, group, name), runs in groups.items():
        base = groups.get((temp, group, BASELINE), [])
        free = groups.get((temp, group, FREE_BASELINE), [])
        out.append(_summary(temp, group, name, runs, base, free))
    order = {g: i for i, g in enumerate((*KINDS, OVERALL))}
    return sorted(out, key=lambda s: (s.temperature, order.get(s.group, len(order))))


def gains(summaries: Sequence[StructuredSummary]) -> list[dict[str, Any]]:
    """What each aid gained, per policy that ran with and without it (overall rows): the
    mean tokens/s with it over the mean without it."""
    rows = {(s.temperature, s.contestant): s for s in summaries if s.group == OVERALL}
    out = []
    for (temp, name), s in rows.items():
        spec, _, aids = name.partition("/")
        if aids:  # the contestant with both aids, against its variants
            continue
        for what, _with, without in GAINS:
            other = rows.get((temp, f"{spec}/{without}"))
            if other is not None and other.mean_tps > 0:
                out.append({"temperature": temp, "policy": spec, "aid": what,
                            "with_tps": s.mean_tps, "without_tps": other.mean_tps,
                            "gain": s.mean_tps / other.mean_tps})
    return out


def acceptance_pairs(summaries: Sequence[StructuredSummary]) -> list[dict[str, Any]]:
    """Per policy that also ran on free text (`SPEC/free`): its acceptance under the
    constraint (all proposals, and the draft's and copies' alone) beside on free text."""
    rows = {(s.temperature, s.contestant): s for s in summaries if s.group == OVERALL}
    out = []
    for (temp, name), s in rows.items():
        free = rows.get((temp, f"{name}/free"))
        if "/" not in name and free is not None:
            out.append({"temperature": temp, "policy": name, "constrained": s.acceptance,
                        "constrained_draft": s.draft_acceptance, "free": free.acceptance})
    return out


def find(summaries: Sequence[StructuredSummary], contestant: str, group: str = OVERALL,
         temperature: float = 0.0) -> StructuredSummary | None:
    return next((s for s in summaries if s.contestant == contestant and s.group == group
                 and s.temperature == temperature), None)


def _summary(temp: float, group: str, name: str, runs: list[StructuredRecord],
             base: list[StructuredRecord], free: list[StructuredRecord]) -> StructuredSummary:
    finished = [r for r in runs if r.finished]
    valid = [r for r in finished if r.valid]
    generated = sum(r.generated for r in runs)
    drafted, accepted = sum(r.drafted for r in runs), sum(r.accepted for r in runs)
    forced, forced_ok = sum(r.forced for r in runs), sum(r.forced_accepted for r in runs)
    predicted = [r for r in runs if r.predicted_s]
    measured_s = sum(r.wall_s for r in predicted)
    predicted_s = sum(r.predicted_s or 0.0 for r in predicted)
    resolved = sorted({SHARE.sub("", r.resolved) for r in runs})
    return StructuredSummary(
        temp, group, name, ", ".join(resolved)[:120], len(runs), _mean_tps(runs),
        _speedup(runs, base), _speedup(runs, free),
        len(finished) / len(runs) if runs else 0.0,
        len(valid) / len(finished) if finished else None, len(finished) - len(valid),
        forced_ok / generated if generated else 0.0,
        accepted / drafted if drafted else 0.0,
        (accepted - forced_ok) / (drafted - forced) if drafted > forced else None,
        1000 * sum(r.mask_s for r in runs) / generated if generated else 0.0,
        _predicted_tps(runs), measured_s / predicted_s - 1 if predicted_s > 0 else None,
        _predicted_speedup(runs, base), _mean_decode_tps(runs), _decode_ratio(runs, free))


def _predicted_tps(runs: Sequence[StructuredRecord]) -> float | None:
    rates = [r.generated / r.predicted_s for r in runs if r.predicted_s]
    return statistics.fmean(rates) if rates else None


def _same_runs(runs: Sequence[StructuredRecord], base: Sequence[StructuredRecord]
               ) -> list[StructuredRecord]:
    keys = {(r.task_id, r.repeat) for r in runs}
    return [b for b in base if (b.task_id, b.repeat) in keys]


def _predicted_speedup(runs: Sequence[StructuredRecord], base: Sequence[StructuredRecord]
                       ) -> float | None:
    mine, theirs = _predicted_tps(runs), _predicted_tps(_same_runs(runs, base))
    return mine / theirs if mine and theirs else None


def _decode_tps(r: StructuredRecord) -> float:
    decode_s = r.wall_s - r.prefill_s
    return r.generated / decode_s if decode_s > 0 else 0.0


def _mean_decode_tps(runs: Sequence[StructuredRecord]) -> float:
    return statistics.fmean(_decode_tps(r) for r in runs) if runs else 0.0


def _decode_ratio(runs: Sequence[StructuredRecord], free: Sequence[StructuredRecord]
                  ) -> float | None:
    theirs = _mean_decode_tps(_same_runs(runs, free))
    return _mean_decode_tps(runs) / theirs if theirs > 0 else None


def _mean_tps(runs: Sequence[StructuredRecord]) -> float:
    return statistics.fmean(r.tokens_per_second for r in runs) if runs else 0.0


def _speedup(runs: Sequence[StructuredRecord], base: Sequence[StructuredRecord]
             ) -> float | None:
    """Mean tokens/s over the baseline's on the same tasks and repeats (a peer skips some)."""
    same = _same_runs(runs, base)
    base_tps = _mean_tps(same)
    return _mean_tps(runs) / base_tps if same and base_tps > 0 else None
