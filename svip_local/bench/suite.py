"""One benchmark session: calibrate if needed, sweep the peer, run every policy side by side on
SpecBench categories and long-form lengths and on chat workloads (`code-edit`), predict the
runs, compare.

`svip-local bench` and scripts/bench_policies.py are thin layers over `run_bench`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from svip_local.bench import peer, predictors
from svip_local.bench.calibrate import calibrate
from svip_local.bench.defaults import DEFAULT_GRID, DEFAULT_POLICIES
from svip_local.bench.peer import PREFIX, PREFIXES, Peer, handles as peer_handles, sweep
from svip_local.bench.prompts import Prompt, select
from svip_local.bench.python_peer import (
    PythonPeer,
    handles as python_peer_handles,
    parse_spec as parse_python_peer,
)
from svip_local.bench.result import BenchResult
from svip_local.bench.runner import (
    BASELINE,
    CALIBRATED_AUTO,
    BenchItem,
    BenchRun,
    ExternalRunner,
    Externals,
    encode,
    progress_bar,
    run_items,
    summarize,
    warm_up,
)
from svip_local.bench.traces import PromptTrace
from svip_local.bench.validate import compare, predict
from svip_local.bench.workloads import CALIBRATION_WORKLOADS, WORKLOADS, chat_prompts
from svip_local.calibration import Calibration, store as calibration_store
from svip_local.errors import InvalidRequestError
from svip_local.policies import Plan, PolicyContext, check_spec, parse_policy
from svip_local.policies.table import split_spec

if TYPE_CHECKING:
    from svip_local.engine import Engine

log = logging.getLogger(__name__)

SPECBENCH = "specbench"  # the SpecBench categories and MT-Bench long-form


@dataclass
class BenchOptions:
    """What to run. Defaults fit a 2-core CPU (about an hour for an F16 1.5B target); scale
    up with more prompts per category, tokens and lengths on faster machines."""

    prompts: list[Prompt]
    prompts_source: str = "built-in"
    per_category: int = 1
    categories: tuple[str, ...] = ()
    max_tokens: int = 128
    lengths: tuple[int, ...] = (128, 512)
    long_prompts: int = 1
    temperatures: tuple[float, ...] = (0.0, 1.0)
    policies: tuple[str, ...] = DEFAULT_POLICIES
    repeats: int = 1
    seed: int = 0
    calibrate: bool = True
    calibration_per_category: int = 2
    calibration_max_tokens: int = 128
    peer: bool = False
    peer_binary: str | None = None
    peer_grid: tuple[tuple[int, float], ...] = DEFAULT_GRID
    peer_sweep_prompts: int = 2
    fresh_auto: bool = False  # `auto` as on a first run: no calibration, no stored estimates
    progress: bool = True
    workloads: tuple[str, ...] = (SPECBENCH,)  # SPECBENCH and/or chat workloads (WORKLOADS)
    chat_max_tokens: int = 256
    chat_per_category: int | None = None  # the first N conversations of each kind; None: all


def bench_items(opts: BenchOptions, chats: dict[str, list[Prompt]] | None = None
                ) -> list[BenchItem]:
    """SpecBench categories at `max_tokens` (stopping at end of text, like the paper), then
    MT-Bench first turns at each long-form length (end of text ignored); then each chat
    workload's conversations (rendered: `chat_prompts`) at `chat_max_tokens`, the first
    `chat_per_category` of each kind where it is set."""
    items = []
    if SPECBENCH in opts.workloads:
        items += [BenchItem("specbench", p.category, p, opts.max_tokens, False)
                  for p in select(opts.prompts, opts.per_category, categories=opts.categories)]
        if opts.lengths:
            mt = select(opts.prompts, opts.long_prompts, categories=("mt-bench",))
            items += [BenchItem("longform", str(n), p, n, True) for n in opts.lengths
                      for p in mt]
    for name, prompts in (chats or {}).items():
        if opts.chat_per_category is not None:
            prompts = select(prompts, opts.chat_per_category)
        items += [BenchItem(name, p.category, p, opts.chat_max_tokens, False) for p in prompts]
    return items


def check_specs(specs: Sequence[str], workloads: Sequence[str] = (SPECBENCH,)) -> None:
    """Every contestant and workload known and well-formed, before any model is loaded."""
    for name in workloads:
        if name != SPECBENCH and name not in WORKLOADS:
            raise InvalidRequestError(f"unknown workload {name!r}; known: "
                                      f"{', '.join((SPECBENCH, *WORKLOADS))}")
    for spec in specs:
        if peer_handles(spec):
            peer.label(spec)
        elif python_peer_handles(spec):
            parse_python_peer(spec)
        elif spec != CALIBRATED_AUTO:
            check_spec(spec, PolicyContext())


def run_bench(engine: Engine, opts: BenchOptions) -> BenchResult:
    if engine.draft_model is None:
        raise InvalidRequestError("a benchmark of draft policies needs a draft model")
    check_specs(opts.policies, opts.workloads)
    chats = {w: chat_prompts(engine, w) for w in opts.workloads if w != SPECBENCH}
    items = _fitting(engine, bench_items(opts, chats))
    cal = engine.calibration()
    if cal is None and opts.calibrate:
        cal = _calibrate(engine, opts, {p.id for p in (i.prompt for i in items)})
    specs = list(dict.fromkeys([BASELINE, *opts.policies]))
    python_peer = PythonPeer(engine.target_model.path, threads=engine.machine.threads,
                             n_ctx=engine.n_ctx, n_gpu_layers=engine.config.n_gpu_layers
                             ) if any(python_peer_handles(s) for s in specs) else None
    runners: list[ExternalRunner] = [python_peer] if python_peer else []
    uncalibrated = [s for s in specs if s == CALIBRATED_AUTO or (
        not python_peer_handles(s) and not peer_handles(s)
        and split_spec(s).policy[0].needs_calibration)]
    if cal is None and uncalibrated:
        log.warning("no calibration: leaving out %s (needs it)", ", ".join(uncalibrated))
        specs = [s for s in specs if s not in uncalibrated]
    peer_table: list[dict[str, float | str]] = []
    if opts.peer or any(peer_handles(s) for s in specs):  # llama.cpp specs in the policies too
        peer = _peer(engine, opts, specs)
        runners.append(peer)
        if opts.peer:
            best, peer_table = _sweep_peer(peer, opts, items)
            specs += [best] if best not in specs else []
    external = Externals(runners)
    local = [s for s in specs if not external.handles(s)]
    if opts.fresh_auto:
        engine.forget_live()
    run = BenchRun()
    warm_up(engine, items[0].prompt)
    total = len(items) * len(specs) * opts.repeats * len(opts.temperatures)
    try:
        with progress_bar(total, "benchmark", opts.progress) as tick:
            for temp in opts.temperatures:
                policies = {s: _plan(engine, s, cal) for s in local}
                run_items(engine, items, specs, temperature=temp, policies=policies,
                          repeats=opts.repeats, seed=opts.seed, external=external,
                          on_run=tick, out=run)
    finally:
        if python_peer is not None:
            python_peer.close()
    predicted = []
    if cal is not None:
        predicted = predict(items, run.traces, local, lambda s: _plan(engine, s, cal),
                            cal.costs, max_draft=engine.config.max_draft,
                            max_copy=engine.config.max_copy)
    measured_sum, predicted_sum = summarize(run.records), summarize(predicted)
    return BenchResult(_meta(engine, opts), run.records, predicted, measured_sum + predicted_sum,
                       compare(measured_sum, predicted_sum), specs, peer_table,
                       cal.to_dict() if cal else None, run.traces,
                       acceptance_prediction(run.traces))


def _plan(engine: Engine, spec: str, cal: Calibration | None) -> Plan:
    """What a contestant runs: its spec on this engine, or `auto` from the calibration."""
    if spec != CALIBRATED_AUTO:
        return engine.make_policy(spec)
    cfg = engine.config
    return parse_policy("auto", PolicyContext(max_draft=cfg.max_draft, max_copy=cfg.max_copy,
                                              calibration=lambda: cal))


def acceptance_prediction(traces: list[PromptTrace]) -> list[dict[str, Any]]:
    """Per temperature, how each acceptance predictor does on the benchmark's traces, by
    folds of its prompts (none where the traces hold no hidden states)."""
    out = []
    for temp in sorted({t.temperature for t in traces}):
        result = predictors.compare([t for t in traces if t.temperature == temp])
        if result:
            out.append({"temperature": temp, **result})
    return out


def _peer(engine: Engine, opts: BenchOptions, specs: list[str]) -> Peer:
    """llama.cpp's binaries on this pair: the sweep's (with `opts.peer`) and those of the
    llama.cpp specs among `specs` must be built."""
    assert engine.draft_model is not None
    machine = engine.machine
    # Our -1 is "all layers"; the peer's -1 is "auto", so name a number past any model's.
    layers = engine.config.n_gpu_layers
    needs = [p for p in PREFIXES if (opts.peer and p == PREFIX)
             or any(s.startswith(p) for s in specs)]
    return Peer(engine.target_model.path, engine.draft_model.path, threads=machine.threads,
                n_ctx=engine.n_ctx, binary=opts.peer_binary, needs=needs,
                n_gpu_layers=None if machine.gpu == "cpu" else 999 if layers < 0 else layers)


def _sweep_peer(peer: Peer, opts: BenchOptions, items: list[BenchItem]
                ) -> tuple[str, list[dict[str, float | str]]]:
    """llama.cpp's simple binary on the first few prompts at every grid setting: its best
    setting (which joins the benchmark) and the sweep's table."""
    sweep_items = ([i for i in items if i.suite == "specbench"] or items)[
        :opts.peer_sweep_prompts]
    with progress_bar(len(opts.peer_grid) * len(sweep_items), "llama.cpp sweep",
                      opts.progress) as tick:
        best, table = sweep(peer, sweep_items, opts.peer_grid, on_run=tick)
    return best, table


def _meta(engine: Engine, opts: BenchOptions) -> dict[str, object]:
    assert engine.draft_model is not None
    return {
        "pair": f"{engine.target_model.path.name} + {engine.draft_model.path.name}",
        "machine": " | ".join(f"{k}={v}" for k, v in vars(engine.machine).items()),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "prompts": f"{opts.prompts_source} ({opts.per_category} per category)",
        "max_tokens": opts.max_tokens, "long-form lengths": list(opts.lengths),
        "workloads": list(opts.workloads), "chat max_tokens": opts.chat_max_tokens,
        "chat per category": opts.chat_per_category or "all",
        "temperatures": list(opts.temperatures), "repeats": opts.repeats,
        "max_draft": engine.config.max_draft, "max_copy": engine.config.max_copy,
        "n_ctx": engine.n_ctx,
    }


def _fitting(engine: Engine, items: list[BenchItem]) -> list[BenchItem]:
    """The items whose prompt and generation fit the context (the others would be cut short
    and measure something else); say which are left out."""
    keep = []
    for item in items:
        need = len(encode(engine, item.prompt)[0]) + item.max_tokens
        if need <= engine.n_ctx:
            keep.append(item)
        else:
            log.warning("skipping %s: prompt + %d tokens need %d > n_ctx %d", item.key,
                        item.max_tokens, need, engine.n_ctx)
    if not keep:
        raise InvalidRequestError(f"no prompt fits the context of {engine.n_ctx} tokens")
    return keep


def _calibrate(engine: Engine, opts: BenchOptions, bench_ids: set[str]) -> Calibration:
    """Calibrate on prompts from the end of each category (the benchmark takes the start)."""
    cal_prompts = select(opts.prompts, opts.calibration_per_category,
                         categories=opts.categories, from_end=True)
    if bench_ids & {p.id for p in cal_prompts}:
        log.warning("calibration and benchmark share prompts: the file is too small for both")
    sampled = sorted({t for t in opts.temperatures if t > 0})
    copies = [p for w in CALIBRATION_WORKLOADS for p in chat_prompts(engine, w)]
    with progress_bar((len(cal_prompts) + len(copies)) * (1 + len(sampled)),
                      "calibration traces", opts.progress) as tick:
        cal, _ = calibrate(engine, cal_prompts, max_tokens=opts.calibration_max_tokens,
                           temperatures=sampled, copy_prompts=copies, on_prompt=tick,
                           progress=lambda m: log.info("calibration: %s", m))
    path = calibration_store.save(cal)
    log.warning("calibrated this pair on this machine: auto = %s (stored in %s)", cal.choice,
                path)
    return cal


