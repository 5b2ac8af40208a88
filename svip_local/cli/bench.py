"""`svip-local bench`: every draft policy side by side on SpecBench prompts and long-form
lengths, with llama.cpp's own speculative binary as a peer; writes a markdown report, JSON,
PNG plots and the greedy traces. `--structured`: the structured-output benchmark instead
(JSON Schema, tool calls and regex tasks, each policy with and without the grammar's aids,
beside llama-cpp-python's and llama.cpp's JSON-schema paths); writes structured.md and
structured.json."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from svip_local.bench.defaults import (
    DEFAULT_GRID,
    DEFAULT_POLICIES,
    STRUCTURED_CONTESTANTS,
)

if TYPE_CHECKING:
    from svip_local.bench.structured import StructuredOptions
    from svip_local.bench.suite import BenchOptions


def csv(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in csv(text))


def positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(s) for s in csv(text))


def grid(text: str) -> tuple[tuple[int, float], ...]:
    """`N_MAX:P_MIN,...`, e.g. `2:0,3:0,16:0.75`."""
    return tuple((int(n), float(p or 0)) for n, _, p in (s.partition(":") for s in csv(text)))


def add_prompt_arguments(p: argparse.ArgumentParser, *, per_category: int) -> None:
    p.add_argument("--prompts", default=None,
                   help="SpecBench-style jsonl (fields turns or prompt, category), or "
                        "hf:OWNER/REPO/PATH of a dataset repo (default: a small built-in set)")
    p.add_argument("--per-category", type=int, default=per_category,
                   help=f"prompts per category (default {per_category})")
    p.add_argument("--categories", type=csv, default=(),
                   help="comma-separated categories (default: all in the file)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from svip_local.cli.generate import add_model_arguments

    p = sub.add_parser("bench", help="benchmark draft policies side by side",
                       description=__doc__)
    add_model_arguments(p)
    add_prompt_arguments(p, per_category=1)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="new tokens per SpecBench prompt (default 128; the paper used 512), "
                        "per structured task (default 192)")
    p.add_argument("--lengths", type=ints, default=(128, 512),
                   help="MT-Bench long-form generation lengths, comma-separated, end of text "
                        "ignored (default 128,512; the paper: 128,...,8192; '' for none)")
    p.add_argument("--long-prompts", type=int, default=1,
                   help="MT-Bench prompts per long-form length (default 1)")
    p.add_argument("--temperatures", type=floats, default=None,
                   help="comma-separated (default 0,1; with --structured 0)")
    p.add_argument("--policies", type=csv, default=None,
                   help="comma-separated specs (default: " + ",".join(DEFAULT_POLICIES) + "); "
                        "with --structured, contestants SPEC[/bare|/no-forced|/no-mask|/free] "
                        "(default: " + ",".join(STRUCTURED_CONTESTANTS) + ")")
    p.add_argument("--repeats", type=int, default=1, help="runs per prompt and policy")
    p.add_argument("--seed", type=int, default=0, help="sampling seed base")
    p.add_argument("--no-calibrate", action="store_true",
                   help="do not calibrate first when this machine has no calibration")
    p.add_argument("--calibration-per-category", type=int, default=2)
    p.add_argument("--peer", action="store_true",
                   help="also run llama.cpp's llama-speculative-simple, swept then at its best "
                        "(build it with scripts/build_llama_tools.sh)")
    p.add_argument("--peer-binary", default=None, help="path of llama-speculative-simple")
    p.add_argument("--peer-grid", type=grid, default=DEFAULT_GRID,
                   help="N_MAX:P_MIN settings to sweep (default: n_max 1-16 at p_min 0, "
                        "p_min 0.3-0.9 at n_max 8 and 16)")
    p.add_argument("--peer-sweep-prompts", type=int, default=2,
                   help="SpecBench prompts (or structured tasks) the sweep runs on (default 2)")
    p.add_argument("--python-peer", action="store_true",
                   help="also run llama-cpp-python's own Llama, alone and with "
                        "LlamaPromptLookupDecoding (specs llama-cpp-python and "
                        "llama-cpp-python+lookup[:N[:NGRAM]] may also go in --policies)")
    p.add_argument("--fresh-auto", action="store_true",
                   help="run auto as a first run gets it: no calibration or stored estimates "
                        "(a probe), learning from the first prompt on; calibrated, and "
                        "auto@calibration (auto started from the calibration), still use it")
    p.add_argument("--workload", type=csv, default=("specbench",),
                   help="what to run, comma-separated: specbench (SpecBench categories and "
                        "MT-Bench long-form, the default) and/or code-edit (conversations "
                        "that paste code and ask for an edit, rendered with the pair's chat "
                        "template)")
    p.add_argument("--chat-max-tokens", type=int, default=256,
                   help="new tokens per chat workload conversation (default 256)")
    p.add_argument("--chat-per-category", type=positive, default=None,
                   help="the first N conversations of each kind (rename, fix, ...) of a chat "
                        "workload (default: all)")
    p.add_argument("--structured", action="store_true",
                   help="run the structured-output benchmark instead: JSON Schema, tool-call "
                        "and regex tasks; auto starts as on a first run")
    p.add_argument("--tasks", default=None,
                   help="with --structured: a task file (default: the built-in set)")
    p.add_argument("--kinds", type=csv, default=(),
                   help="with --structured: task kinds, comma-separated (extract, record, "
                        "tool, regex; default all)")
    p.add_argument("--per-kind", type=positive, default=None,
                   help="with --structured: the first N tasks of each kind (default: all)")
    p.add_argument("--out", default="bench-out", help="output directory (default bench-out)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs (no matplotlib)")
    p.set_defaults(func=run)


def options(args: argparse.Namespace) -> BenchOptions:
    from svip_local.bench.prompts import load_prompts
    from svip_local.bench.python_peer import DEFAULT_SPECS as PYTHON_PEERS
    from svip_local.bench.suite import BenchOptions

    return BenchOptions(
        load_prompts(args.prompts), args.prompts or "built-in", per_category=args.per_category,
        categories=args.categories, max_tokens=args.max_tokens or 128, lengths=args.lengths,
        long_prompts=args.long_prompts, temperatures=args.temperatures or (0.0, 1.0),
        policies=(*(args.policies or DEFAULT_POLICIES),
                  *(PYTHON_PEERS if args.python_peer else ())),
        repeats=args.repeats, seed=args.seed,
        calibrate=not args.no_calibrate,
        calibration_per_category=args.calibration_per_category, peer=args.peer,
        peer_binary=args.peer_binary, peer_grid=args.peer_grid,
        peer_sweep_prompts=args.peer_sweep_prompts, fresh_auto=args.fresh_auto,
        workloads=args.workload, chat_max_tokens=args.chat_max_tokens,
        chat_per_category=args.chat_per_category)


def structured_options(args: argparse.Namespace) -> StructuredOptions:
    from svip_local.bench.structured import StructuredOptions
    from svip_local.bench.structured_tasks import load_tasks

    return StructuredOptions(
        load_tasks(args.tasks), args.tasks or "built-in", kinds=args.kinds,
        per_kind=args.per_kind, contestants=args.policies or STRUCTURED_CONTESTANTS,
        max_tokens=args.max_tokens or 192, temperatures=args.temperatures or (0.0,),
        repeats=args.repeats, seed=args.seed, python_peer=args.python_peer, peer=args.peer,
        peer_binary=args.peer_binary, peer_grid=args.peer_grid,
        peer_sweep_tasks=args.peer_sweep_prompts)


def run_structured(args: argparse.Namespace) -> int:
    from svip_local.bench.structured import run_structured
    from svip_local.bench.structured_records import parse_contestant
    from svip_local.bench.structured_report import console_table, write_report
    from svip_local.cli.generate import open_engine

    opts = structured_options(args)
    for name in opts.contestants:  # a typo fails before the models load
        parse_contestant(name)
    with open_engine(args, policy="none") as engine:
        result = run_structured(engine, opts)
    paths = write_report(result, Path(args.out))
    for temp in opts.temperatures:
        print(console_table(result, temp), end="\n\n")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.structured:
        return run_structured(args)
    from svip_local.bench.report import SUITES, console_table, write_report
    from svip_local.bench.suite import check_specs, run_bench
    from svip_local.bench.traces import TraceSet
    from svip_local.cli.generate import open_engine

    opts = options(args)
    check_specs(opts.policies, opts.workloads)  # a typo fails before the models load
    if args.n_ctx is None:  # room for the longest generation after a long prompt
        args.n_ctx = max(4096, max((*opts.lengths, opts.max_tokens)) + 2048)
    with open_engine(args, policy="none") as engine:
        result = run_bench(engine, opts)
    out = Path(args.out)
    paths = write_report(result, out, plots=not args.no_plots)
    paths.append(TraceSet({**result.meta, "source": "svip-local bench"},
                          result.traces).save(out / "traces.npz"))
    for suite in sorted({s.suite for s in result.summaries}, key=list(SUITES).index):
        for temp in opts.temperatures:
            print(console_table(result, suite=suite, temperature=temp), end="\n\n")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
