"""Choose the draft-length policy for this pair on this machine, by simulation.

Calibration records greedy traces on a prompt set (each is also a timed target-alone run),
measures the cost model, times a few speculative runs to learn the loop's own overhead
(`calibrate_measure`), fits the entropy-to-acceptance map, then replays every candidate policy
on the traces and keeps the fastest (`calibrate_search`); proposal sources (prompt lookup) are
tried on top of the best few policies and of the target alone. The candidates and their grids
come from the policy table. Then the same per sampling temperature, on sampled traces (a copy
replays against the sampled path, which is a draw of the target's distribution). Each
temperature also fits the copy model `auto` prices copies by (`copy_fit`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from svip_local.bench.calibrate_measure import loop_overhead, record_traces
from svip_local.bench.calibrate_search import choose
from svip_local.bench.costs import measure_costs
from svip_local.bench.prompts import Prompt
from svip_local.bench.runner import encode
from svip_local.bench.traces import PromptTrace
from svip_local.calibration import Calibration, PairIdentity, temperature_label
from svip_local.errors import InvalidRequestError
from svip_local.policies import Constant
from svip_local.sampling import SamplingParams

if TYPE_CHECKING:
    from svip_local.engine import Engine

log = logging.getLogger(__name__)


def calibrate(engine: Engine, prompts: Sequence[Prompt], *, max_tokens: int = 128,
              ignore_eos: bool = False, repeats: int = 5,
              temperatures: Sequence[float] = (1.0,), copy_prompts: Sequence[Prompt] = (),
              progress: Callable[[str], None] | None = None,
              on_prompt: Callable[[], None] | None = None) -> tuple[Calibration,
                                                                   list[PromptTrace]]:
    """Measure and choose, greedily and at each sampling temperature in `temperatures` (0 is
    always calibrated); does not store (see `store.save`). `copy_prompts` (chat prompts
    whose replies copy: the `code-edit-calibration` workload) add traces the copy model is
    fitted on, not searched on. `on_prompt` ticks once per traced prompt and
    temperature."""
    assert engine.draft_model is not None, "calibration needs a draft model"
    say = progress or (lambda _msg: None)
    max_draft = engine.config.max_draft
    prompts, copy_prompts = (_fitting(engine, group, max_tokens)
                             for group in (prompts, copy_prompts))
    if not prompts:
        raise InvalidRequestError(f"no calibration prompt fits the context of {engine.n_ctx}")
    engine.reset()
    engine.complete(encode(engine, prompts[0])[0], max_tokens=8, policy=Constant(2))
    say("traces (greedy target-alone runs)")
    traces, walls = record_traces(engine, prompts, max_tokens=max_tokens,
                                  ignore_eos=ignore_eos, on_prompt=on_prompt)
    say("cost model")
    tokens = [t for p in prompts for t in encode(engine, p)[0]]
    costs = measure_costs(engine, tokens, repeats=repeats, progress=say)
    say("loop overhead")
    costs = loop_overhead(engine, traces, walls, prompts, costs, max_draft=max_draft,
                          ignore_eos=ignore_eos)
    copies = _copy_traces(engine, copy_prompts, 0.0, max_tokens, ignore_eos, on_prompt, say)
    say("search (greedy)")
    greedy = choose(traces, costs, max_draft=max_draft, copy_traces=copies)
    traces += copies
    sampled = []
    for temp in sorted({t for t in temperatures if t > 0}):
        say(f"traces (temperature {temp:g} target-alone runs)")
        at_temp, _ = record_traces(engine, prompts, max_tokens=max_tokens,
                                   ignore_eos=ignore_eos,
                                   sampling=SamplingParams(temperature=temp),
                                   on_prompt=on_prompt)
        copies = _copy_traces(engine, copy_prompts, temp, max_tokens, ignore_eos, on_prompt,
                              say)
        say(f"search (temperature {temp:g})")
        sampled.append(choose(at_temp, costs, max_draft=max_draft, temperature=temp,
                              copy_traces=copies))
        traces += at_temp + copies
    cal = Calibration(
        PairIdentity.of(engine.target_model.path, engine.draft_model.path), engine.machine,
        greedy, costs, sampled,
        {"prompts": [p.id for p in prompts], "max_tokens": max_tokens, "ignore_eos": ignore_eos,
         "positions": int(sum(t.generated for t in traces if t.temperature == 0)),
         "max_draft": max_draft, "created": datetime.now(UTC).isoformat(timespec="seconds")})
    return cal, traces


def _fitting(engine: Engine, prompts: Sequence[Prompt], max_tokens: int) -> list[Prompt]:
    """The prompts that fit the context with `max_tokens` new tokens (saying how many not)."""
    fitting = [p for p in prompts if len(encode(engine, p)[0]) + max_tokens <= engine.n_ctx]
    if len(fitting) < len(prompts):
        log.warning("calibration skips %d prompts that do not fit n_ctx %d with %d new tokens",
                    len(prompts) - len(fitting), engine.n_ctx, max_tokens)
    return fitting


def _copy_traces(engine: Engine, prompts: Sequence[Prompt], temperature: float,
                 max_tokens: int, ignore_eos: bool, on_prompt: Callable[[], None] | None,
                 say: Callable[[str], None]) -> list[PromptTrace]:
    """Traces of the copy prompts at one temperature (none without them)."""
    if not prompts:
        return []
    say(f"copy traces ({temperature_label(temperature)})")
    sampling = SamplingParams(temperature=temperature) if temperature > 0 else None
    return record_traces(engine, prompts, max_tokens=max_tokens, ignore_eos=ignore_eos,
                         sampling=sampling, on_prompt=on_prompt)[0]
