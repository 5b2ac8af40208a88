"""Side-by-side benchmark runs in one process, and their speed by both metrics.

Every policy runs on the same prompt before the next prompt starts, in an order that rotates
from prompt to prompt, so a slow spell of a shared machine hits every policy alike. Both caches
are emptied before each run: every run pays its own prefill, which is included in its time
(as in the SVIP paper). Speed is reported two ways: the paper's mean over prompts of per-prompt
tokens/s, and total tokens over total time.
"""

from __future__ import annotations

import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from svip_local.bench.prompts import Prompt
from svip_local.bench.traces import PromptTrace, record_trace
from svip_local.policies import Constant, Plan
from svip_local.sampling import SamplingParams

if TYPE_CHECKING:
    from svip_local.engine import Engine
    from svip_local.events import GenerationStats

BASELINE = "none"
# `auto` started from this machine's calibration (its costs, acceptance map and copy model),
# beside `auto` as a first run gets it (`BenchOptions.fresh_auto`).
CALIBRATED_AUTO = "auto@calibration"


@dataclass(frozen=True)
class BenchItem:
    """One prompt at one generation length: `group` is its category, or the length."""

    suite: str  # "specbench" | "longform" | a chat workload ("code-edit")
    group: str
    prompt: Prompt
    max_tokens: int
    ignore_eos: bool

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.group}/{self.prompt.id}"


def encode(engine: Engine, prompt: Prompt) -> tuple[list[int], list[tuple[int, str]]]:
    """The prompt's ids (a chat prompt's special tokens parsed, as every peer parses them)
    and, for a chat prompt, where each message starts."""
    from svip_local.chat import message_regions

    ids = engine.tokenize(prompt.text, parse_special=prompt.chat)
    return ids, message_regions(engine, prompt.text, prompt.messages, ids) if prompt.chat \
        else []


@dataclass
class RunRecord:
    """One generation (measured, or predicted by the simulator when `simulated`)."""

    suite: str
    group: str
    prompt_id: str
    temperature: float
    max_tokens: int
    policy: str  # as benchmarked: "auto", "constant:4", "llama.cpp:3:0", "oracle"
    resolved: str  # what it ran as (auto's choice, svip-cost's rate)
    repeat: int
    generated: int
    wall_s: float
    prefill_s: float
    drafted: int
    accepted: int
    draft_lengths: list[int] = field(default_factory=list)
    accepted_lengths: list[int] = field(default_factory=list)
    rounds: int = 0
    finish: str = ""
    simulated: bool = False
    node_counts: list[int] = field(default_factory=list)  # tokens verified per round

    @property
    def tokens_per_second(self) -> float:
        return self.generated / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def measured(cls, item: BenchItem, temperature: float, policy: str, repeat: int,
                 stats: GenerationStats, finish: str) -> RunRecord:
        return cls(item.suite, item.group, item.prompt.id, temperature, item.max_tokens, policy,
                   stats.policy, repeat, stats.generated, stats.wall_s, stats.prefill_s,
                   stats.drafted, stats.accepted, list(stats.draft_lengths),
                   list(stats.accepted_lengths), stats.rounds, finish,
                   node_counts=list(stats.node_counts))


class ExternalRunner(Protocol):
    """A policy run outside this process (llama.cpp's own binary), by spec name."""

    def handles(self, spec: str) -> bool: ...

    def run(self, item: BenchItem, spec: str, temperature: float, seed: int,
            repeat: int) -> RunRecord: ...


@dataclass
class Externals:
    """Several external runners as one: each spec goes to the first that handles it."""

    runners: Sequence[ExternalRunner]

    def handles(self, spec: str) -> bool:
        return any(r.handles(spec) for r in self.runners)

    def run(self, item: BenchItem, spec: str, temperature: float, seed: int,
            repeat: int) -> RunRecord:
        runner = next(r for r in self.runners if r.handles(spec))
        return runner.run(item, spec, temperature, seed, repeat)


@dataclass
class BenchRun:
    """What `run_items` produced: measured runs, and traces of the baseline runs."""

    records: list[RunRecord] = field(default_factory=list)
    traces: list[PromptTrace] = field(default_factory=list)


def run_items(engine: Engine, items: Sequence[BenchItem], specs: Sequence[str], *,
              temperature: float, policies: dict[str, Plan], repeats: int = 1,
              seed: int = 0, external: ExternalRunner | None = None,
              on_run: Callable[[], None] | None = None, out: BenchRun | None = None
              ) -> BenchRun:
    """Run every spec on every item, interleaved. `policies` holds one live object per spec
    (created by the caller, so adaptive policies learn across prompts as in a chat session).
    Baseline runs also record the item's trace at this temperature, for the simulator."""
    out = out or BenchRun()
    for i, item in enumerate(items):
        if temperature > 0:
            # Each policy consumes the random stream its own way, so one sampled run may end
            # its text after 20 tokens and the next run to the limit: timed against each other
            # that compares lengths, not speed. Sampled runs all generate exactly max_tokens.
            item = replace(item, ignore_eos=True)
        ids, regions = encode(engine, item.prompt)
        for r in range(repeats):
            sampling = SamplingParams() if temperature == 0 else SamplingParams(
                temperature=temperature, seed=seed + 1000 * i + r)
            shift = (i * repeats + r) % len(specs)
            for spec in [*specs[shift:], *specs[:shift]]:
                if external is not None and external.handles(spec):
                    out.records.append(external.run(item, spec, temperature,
                                                    seed + 1000 * i + r, r))
                else:
                    engine.reset()
                    done = engine.complete(ids, max_tokens=item.max_tokens, sampling=sampling,
                                           policy=policies[spec], ignore_eos=item.ignore_eos,
                                           regions=regions)
                    out.records.append(RunRecord.measured(item, temperature, spec, r,
                                                          done.stats, done.finish_reason))
                    if spec == BASELINE and r == 0:
                        out.traces.append(record_trace(
                            engine, ids, done, prompt_id=item.key, category=item.group,
                            max_tokens=item.max_tokens, sampling=sampling, regions=regions))
                if on_run:
                    on_run()
    return out


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """A tqdm bar on stderr; yields its tick. Also when stderr is a log file: a long
    benchmark left running should say how far it got."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="run", file=sys.stderr, disable=not enabled,
              mininterval=2.0) as bar:
        def tick() -> None:
            bar.update(1)

        yield tick


def warm_up(engine: Engine, prompt: Prompt) -> None:
    """Fault the weights in and let caches settle before anything is timed."""
    engine.reset()
    engine.complete(encode(engine, prompt)[0], max_tokens=8, policy=Constant(2))
    engine.reset()




# -- metrics ------------------------------------------------------------------------------------

@dataclass
class Summary:
    """A policy's speed on one group of runs, next to the target alone on the same runs."""

    suite: str
    group: str
    temperature: float
    policy: str
    resolved: str
    runs: int
    mean_tps: float  # mean of per-run tokens/s (the SVIP paper's metric)
    total_tps: float  # total tokens / total seconds
    sd_tps: float  # spread of per-run tokens/s
    speedup: float | None  # mean_tps over the baseline's mean_tps
    speedup_total: float | None
    speedup_min: float | None  # range of the per-prompt (paired) speedups
    speedup_max: float | None
    acceptance: float
    mean_draft: float
    mean_accepted: float
    simulated: bool = False
    mean_nodes: float = 0.0  # tokens verified per round (a tree's every node)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(records: Iterable[RunRecord], *, overall: str = "all") -> list[Summary]:
    """Per (suite, group, temperature, policy), plus an `overall` group per suite."""
    groups: dict[tuple[str, str, float, bool], list[RunRecord]] = defaultdict(list)
    for rec in records:
        groups[(rec.suite, rec.group, rec.temperature, rec.simulated)].append(rec)
        groups[(rec.suite, overall, rec.temperature, rec.simulated)].append(rec)
    out = []
    for (suite, group, temp, simulated), recs in groups.items():
        by_policy: dict[str, list[RunRecord]] = defaultdict(list)
        for rec in recs:
            by_policy[rec.policy].append(rec)
        base = by_policy.get(BASELINE, [])
        for policy, runs in by_policy.items():
            out.append(_summary(suite, group, temp, policy, runs, base, simulated))
    return out


# auto's status gives each arm's share of the reply (`auto → lookup 41%`): a table names the arms.
SHARE = re.compile(r" \d+%")


def _summary(suite: str, group: str, temp: float, policy: str, runs: list[RunRecord],
             base: list[RunRecord], simulated: bool) -> Summary:
    rates = [r.tokens_per_second for r in runs]
    mean = statistics.fmean(rates)
    total = _total(runs)
    base_by_key = {(b.suite, b.group, b.prompt_id, b.repeat): b for b in base}
    paired = [r.tokens_per_second / b.tokens_per_second for r in runs
              if (b := base_by_key.get((r.suite, r.group, r.prompt_id, r.repeat)))
              and b.tokens_per_second > 0]
    base_mean = statistics.fmean([b.tokens_per_second for b in base]) if base else 0.0
    drafted = sum(r.drafted for r in runs)
    rounds = sum(r.rounds for r in runs)
    resolved = sorted({SHARE.sub("", r.resolved) for r in runs})
    return Summary(
        suite, group, temp, policy, ", ".join(resolved), len(runs), mean, total,
        statistics.stdev(rates) if len(rates) > 1 else 0.0,
        mean / base_mean if base_mean > 0 else None,
        total / _total(base) if base and _total(base) > 0 else None,
        min(paired) if paired else None, max(paired) if paired else None,
        sum(r.accepted for r in runs) / drafted if drafted else 0.0,
        drafted / rounds if rounds else 0.0,
        sum(r.accepted for r in runs) / rounds if rounds else 0.0, simulated,
        sum(sum(r.node_counts) for r in runs) / rounds if rounds else 0.0)


def _total(runs: Sequence[RunRecord]) -> float:
    wall = sum(r.wall_s for r in runs)
    return sum(r.generated for r in runs) / wall if wall > 0 else 0.0
