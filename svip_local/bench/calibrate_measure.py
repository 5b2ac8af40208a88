"""Calibration's measurements on the engine: timed target-alone runs and their traces, and
the loop's own overhead beyond the component cost model (`costs.measure_costs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from svip_local.bench.costs import fit_overhead
from svip_local.bench.prompts import Prompt
from svip_local.bench.runner import encode
from svip_local.bench.simulate import simulate
from svip_local.bench.traces import PromptTrace, record_trace
from svip_local.calibration import CostModel
from svip_local.policies import Constant, NoDraft, Strategy
from svip_local.sampling import SamplingParams

if TYPE_CHECKING:
    from svip_local.engine import Engine


def record_traces(engine: Engine, prompts: Sequence[Prompt], *, max_tokens: int,
                  ignore_eos: bool = False, sampling: SamplingParams | None = None,
                  on_prompt: Callable[[], None] | None = None
                  ) -> tuple[list[PromptTrace], list[float]]:
    """Target-alone run of each prompt (timed: wall seconds returned) and its trace; greedy,
    or sampled with `sampling` (seeded per prompt from its seed, default 0)."""
    traces, walls = [], []
    for i, p in enumerate(prompts):
        ids, regions = encode(engine, p)
        params = None if sampling is None else replace(sampling, seed=(sampling.seed or 0) + i)
        engine.reset()
        done = engine.complete(ids, max_tokens=max_tokens, policy=NoDraft(),
                               ignore_eos=ignore_eos, sampling=params)
        walls.append(done.stats.wall_s)
        traces.append(record_trace(engine, ids, done, prompt_id=p.id, category=p.category,
                                   max_tokens=max_tokens, sampling=params, regions=regions))
        if on_prompt:
            on_prompt()
    return traces, walls


def loop_overhead(engine: Engine, traces: Sequence[PromptTrace], walls: Sequence[float],
                  prompts: Sequence[Prompt], costs: CostModel, *, max_draft: int,
                  ignore_eos: bool, spec_prompts: int = 2) -> CostModel:
    """`costs` plus the loop's own time per round, emitted token and draft step: what the
    component model does not explain in timed runs (the target-alone runs, and constant:1
    and constant:4 runs on `spec_prompts` prompts, whose rounds differ in shape)."""
    rows = []
    for trace, wall in zip(traces, walls, strict=True):
        sim = simulate(trace, Strategy(NoDraft()), costs)
        rows.append((wall - sim.time_s, sim.rounds, sim.generated, 0))
    for trace, p in list(zip(traces, prompts, strict=True))[:spec_prompts]:
        for k in (1, 4):
            engine.reset()
            done = engine.complete(encode(engine, p)[0], max_tokens=trace.budget,
                                   policy=Constant(k), ignore_eos=ignore_eos)
            sim = simulate(trace, Strategy(Constant(k)), costs)
            s = done.stats
            # A constant length never drops a token: one draft step per drafted token.
            rows.append((s.wall_s - sim.time_s, s.rounds, s.generated, s.drafted))
    return costs.with_overhead(*fit_overhead(rows))
