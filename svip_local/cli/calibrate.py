"""`svip-local calibrate`: measure this machine's costs for a pair, record greedy and sampled
traces, choose the fastest draft-length policy for each temperature by simulation and store the
choices for `--policy auto`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from svip_local.cli.bench import add_prompt_arguments, floats

if TYPE_CHECKING:
    from svip_local.bench.prompts import Prompt
    from svip_local.calibration import Calibration
    from svip_local.engine import Engine


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from svip_local.cli.generate import add_model_arguments

    p = sub.add_parser("calibrate", help="choose the draft policy for this machine",
                       description=__doc__)
    add_model_arguments(p)
    add_prompt_arguments(p, per_category=2)
    p.add_argument("--max-tokens", type=int, default=128,
                   help="new tokens per calibration prompt (default 128)")
    p.add_argument("--ignore-eos", action="store_true", help="generate past end of text")
    p.add_argument("--temperatures", type=floats, default=(0.0, 1.0),
                   help="sampling temperatures to choose for, comma-separated (default 0,1; "
                        "greedy is always calibrated; a generation uses the choice of the "
                        "nearest one)")
    p.add_argument("--repeats", type=int, default=5, help="timings per cost measurement")
    p.add_argument("--traces", default=None, help="also save the traces to this .npz")
    p.add_argument("--validate", action="store_true",
                   help="then time the choice, the best constant length, SVIP and the target "
                        "alone on the same prompts, and compare with the simulator")
    p.add_argument("--show", action="store_true",
                   help="print the stored calibration instead of measuring")
    p.add_argument("--json", action="store_true", help="print the calibration as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from svip_local.bench.calibrate import calibrate
    from svip_local.bench.calibrate_text import summary_lines
    from svip_local.bench.prompts import load_prompts, select
    from svip_local.bench.runner import progress_bar
    from svip_local.bench.traces import TraceSet
    from svip_local.bench.workloads import CALIBRATION_WORKLOADS, chat_prompts
    from svip_local.calibration import store
    from svip_local.cli.generate import open_engine
    from svip_local.errors import InvalidRequestError

    with open_engine(args, policy="none") as engine:
        if engine.draft_model is None:
            raise InvalidRequestError("calibration needs a draft model (--draft)")
        if args.show:
            cal = engine.calibration()
            if cal is None:
                print("no calibration for this pair on this machine", file=sys.stderr)
                return 1
        else:
            prompts = select(load_prompts(args.prompts), args.per_category,
                             categories=args.categories, from_end=True)
            sampled = {t for t in args.temperatures if t > 0}
            # Conversations whose replies copy, for the copy model (not searched on).
            copies = [p for w in CALIBRATION_WORKLOADS for p in chat_prompts(engine, w)]
            with progress_bar((len(prompts) + len(copies)) * (1 + len(sampled)),
                              "calibration traces") as tick:
                cal, traces = calibrate(engine, prompts, max_tokens=args.max_tokens,
                                        ignore_eos=args.ignore_eos, repeats=args.repeats,
                                        temperatures=sorted(sampled), copy_prompts=copies,
                                        on_prompt=tick,
                                        progress=lambda m: print(f"[calibrate] {m}",
                                                                 file=sys.stderr))
            path = store.save(cal)
            print(f"[calibrate] stored {path}", file=sys.stderr)
            if args.traces:
                TraceSet({"pair": [cal.pair.target, cal.pair.draft],
                          "prompts": args.prompts or "built-in", **cal.settings},
                         traces).save(args.traces)
            if args.validate:
                _validate(engine, cal, prompts, args.max_tokens, args.ignore_eos)
        if args.json:
            print(json.dumps(cal.to_dict(), indent=1))
        else:
            print("\n".join(summary_lines(cal)))
    return 0


def _validate(engine: Engine, cal: Calibration, prompts: list[Prompt], max_tokens: int,
              ignore_eos: bool) -> None:
    """Time a few policies live, greedily, and print the simulator's error for each."""
    from svip_local.bench.runner import BenchItem, run_items, summarize
    from svip_local.bench.validate import compare, predict

    constants = [c["policy"] for c in cal.greedy.simulated
                 if c["policy"].startswith("constant:")]
    specs = list(dict.fromkeys(["none", *constants[:1], "svip:0.3", cal.choice]))
    items = [BenchItem("calibration", p.category, p, max_tokens, ignore_eos) for p in prompts]
    policies = {s: engine.make_policy(s) for s in specs}
    run = run_items(engine, items, specs, temperature=0.0, policies=policies)
    predicted = predict(items, run.traces, specs, engine.make_policy, cal.costs,
                        max_draft=engine.config.max_draft, max_copy=engine.config.max_copy)
    for c in compare(summarize(run.records), summarize(predicted)):
        if c.group == "all":
            print(f"[validate] {c.policy:<22} predicted {c.predicted_tps:7.2f}  measured "
                  f"{c.measured_tps:7.2f} tok/s  error {c.error:+.1%}", file=sys.stderr)
