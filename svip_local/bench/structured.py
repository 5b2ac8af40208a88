"""The structured-output benchmark: contestants side by side on the task set
(`structured_tasks`), in one process, task by task.

Every contestant runs a task before the next task starts, in an order that rotates from task
to task, and every engine run starts from empty caches (it pays its prefill, which its time
includes), as `runner.run_items` does for the free-text benchmark. Each task's conversation is
rendered once with the pair's chat template (a tool task's tools in the template's own tool
section) into the one prompt every contestant gets.

Contestants (`structured_records`) are policy specs with the constraint's speculation aids
after a slash (`auto`, `auto/bare`, `auto/no-forced`, `auto/no-mask`, `auto/free`) and the
peers (`structured_peers`). `none/bare` is the constrained target alone (the baseline) and
`none/free` the unconstrained one; `none` with both aids is the target with forced tokens
only. Engine runs are `structured_engine`'s; `structured_report` writes the results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from svip_local.bench import python_peer
from svip_local.bench.defaults import DEFAULT_GRID, STRUCTURED_CONTESTANTS
from svip_local.bench.runner import progress_bar
from svip_local.bench.structured_engine import prepare, run_engine, warm_up
from svip_local.bench.structured_peers import Peers
from svip_local.bench.structured_records import (
    BASELINE,
    FREE_BASELINE,
    Contestant,
    PreparedTask,
    StructuredRecord,
    StructuredRun,
    parse_contestant,
)
from svip_local.bench.structured_tasks import StructuredTask, load_tasks, select_tasks
from svip_local.errors import InvalidRequestError
from svip_local.sampling import SamplingParams

if TYPE_CHECKING:
    from svip_local.calibration import CostModel
    from svip_local.engine import Engine
    from svip_local.policies import Plan

log = logging.getLogger(__name__)


@dataclass
class StructuredOptions:
    """What to run. The defaults fit a 2-core CPU: every task once, greedy."""

    tasks: list[StructuredTask] = field(default_factory=load_tasks)
    tasks_source: str = "built-in"
    kinds: tuple[str, ...] = ()
    per_kind: int | None = None
    contestants: tuple[str, ...] = STRUCTURED_CONTESTANTS
    max_tokens: int = 192
    temperatures: tuple[float, ...] = (0.0,)
    repeats: int = 1
    seed: int = 0
    python_peer: bool = False  # add llama-cpp-python, alone and with its prompt lookup
    peer: bool = False  # sweep llama-speculative-simple, then run its best setting
    peer_binary: str | None = None
    peer_grid: tuple[tuple[int, float], ...] = DEFAULT_GRID
    peer_sweep_tasks: int = 2
    fresh_auto: bool = True  # `auto` as a first run gets it (no stored estimates)
    progress: bool = True


def run_structured(engine: Engine, opts: StructuredOptions) -> StructuredRun:
    """Run every contestant on every task at every temperature, interleaved."""
    from svip_local.chat import ChatTemplate

    if engine.draft_model is None:
        raise InvalidRequestError("a benchmark of draft policies needs a draft model")
    contestants = [parse_contestant(n) for n in dict.fromkeys(
        [FREE_BASELINE, BASELINE, *opts.contestants,
         *(python_peer.DEFAULT_SPECS if opts.python_peer else ())])]
    tasks = select_tasks(opts.tasks, kinds=opts.kinds, per_kind=opts.per_kind)
    template = ChatTemplate.for_engine(engine)
    prepared = _fitting(engine, [prepare(engine, template, t) for t in tasks], opts.max_tokens)
    cal = engine.calibration()
    peers = Peers(engine, contestants, sweep=opts.peer, binary=opts.peer_binary)
    notes = peers.notes()
    if sum(c.spec == "auto" for c in contestants) > 1:
        notes.append("auto's variants share the engine's one live model (its costs and "
                     "acceptance estimates), as one session would: what auto/bare's unmasked "
                     "drafts and auto/free's free text teach it, auto uses too.")
    if cal is None:
        notes.append("No calibration of this pair on this machine: no predicted column "
                      "(run `svip-local calibrate` first).")
    try:
        sweep: list[dict[str, Any]] = []
        if opts.peer:
            best, sweep = peers.sweep(prepared, opts.peer_grid, tasks=opts.peer_sweep_tasks,
                                      max_tokens=opts.max_tokens, progress=opts.progress)
            if best not in {c.name for c in contestants}:
                contestants.append(Contestant(best, best))
        if opts.fresh_auto:
            engine.forget_live()
        warm_up(engine, prepared[0])
        records: list[StructuredRecord] = []
        total = len(prepared) * len(contestants) * opts.repeats * len(opts.temperatures)
        with progress_bar(total, "structured benchmark", opts.progress) as tick:
            for temp in opts.temperatures:
                plans = {c.name: engine.make_policy(c.spec) for c in contestants if not c.peer}
                records += run_tasks(engine, prepared, contestants, plans, peers,
                                     temperature=temp, opts=opts,
                                     costs=cal.costs if cal else None, on_run=tick)
    finally:
        peers.close()
    return StructuredRun(_meta(engine, opts, prepared, cal is not None),
                         [c.name for c in contestants], records, sweep, notes)


def run_tasks(engine: Engine, prepared: Sequence[PreparedTask],
              contestants: Sequence[Contestant], plans: dict[str, Plan], peers: Peers, *,
              temperature: float, opts: StructuredOptions, costs: CostModel | None,
              on_run: Callable[[], None] | None = None) -> list[StructuredRecord]:
    """Task-major: every contestant on task 1 (in an order that rotates per task), then
    task 2, ...; `plans` hold one live policy per contestant (adaptive ones learn across
    tasks, as in a session)."""
    out = []
    for i, prep in enumerate(prepared):
        for r in range(opts.repeats):
            seed = opts.seed + 1000 * i + r
            sampling = SamplingParams() if temperature == 0 else SamplingParams(
                temperature=temperature, seed=seed)
            shift = (i * opts.repeats + r) % len(contestants)
            for c in [*contestants[shift:], *contestants[:shift]]:
                if c.peer:
                    rec = peers.run(prep, c, temperature, seed, r, opts.max_tokens)
                else:
                    rec = run_engine(engine, prep, c, plans[c.name], sampling, r,
                                     opts.max_tokens, costs)
                if rec is not None:
                    out.append(rec)
                if on_run:
                    on_run()
    return out


def _fitting(engine: Engine, prepared: list[PreparedTask], max_tokens: int
             ) -> list[PreparedTask]:
    keep = [p for p in prepared if len(p.ids) + max_tokens <= engine.n_ctx]
    for p in prepared:
        if p not in keep:
            log.warning("skipping %s: %d prompt tokens + %d do not fit n_ctx %d", p.task.id,
                        len(p.ids), max_tokens, engine.n_ctx)
    if not keep:
        raise InvalidRequestError(f"no task fits the context of {engine.n_ctx} tokens")
    return keep


def _meta(engine: Engine, opts: StructuredOptions, prepared: Sequence[PreparedTask],
          calibrated: bool) -> dict[str, Any]:
    assert engine.draft_model is not None
    kinds: dict[str, int] = {}
    for p in prepared:
        kinds[p.task.kind] = kinds.get(p.task.kind, 0) + 1
    return {
        "pair": f"{engine.target_model.path.name} + {engine.draft_model.path.name}",
        "machine": " | ".join(f"{k}={v}" for k, v in vars(engine.machine).items()),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "tasks": f"{opts.tasks_source}: " + ", ".join(f"{n} {k}" for k, n in kinds.items()),
        "max_tokens": opts.max_tokens, "temperatures": list(opts.temperatures),
        "repeats": opts.repeats, "auto": "first run (no stored estimates)"
        if opts.fresh_auto else "from stored estimates / calibration",
        "calibrated": calibrated, "max_draft": engine.config.max_draft,
        "max_copy": engine.config.max_copy, "n_ctx": engine.n_ctx,
    }
