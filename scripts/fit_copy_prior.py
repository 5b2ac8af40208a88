#!/usr/bin/env python3
"""Fit the copy model's first-run prior (`calibration/copies.py`) on a pair's traces.

    python scripts/fit_copy_prior.py qwen2.5-coder-1.5b --out DIR [--traces DIR/traces.npz]

Records target-alone traces, greedy and at temperature 1, of SpecBench prompts (from the end
of each category: benchmarks take them from the start) and of the `code-edit-calibration`
conversations (never benchmarked), then fits the copy model per temperature from an
uninformative start and prints the weights to paste into `_PRIOR_GREEDY` / `_PRIOR_SAMPLED`,
with the held-out comparison against one acceptance rate. With --traces it refits traces
recorded before instead of recording. Writes DIR/traces.npz and DIR/copy_prior.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from svip_local import load
from svip_local.bench.calibrate_measure import record_traces
from svip_local.bench.copy_fit import compare, copy_examples, summary_line
from svip_local.bench.prompts import load_prompts, select
from svip_local.bench.traces import PromptTrace, TraceSet
from svip_local.bench.workloads import chat_prompts
from svip_local.calibration.copies import FEATURES, CopyModel
from svip_local.sampling import SamplingParams

SPECBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench_dev.jsonl"
START = CopyModel([0.0] * len(FEATURES), [1.0] * len(FEATURES))  # a weak zero-mean start


def record(args: argparse.Namespace) -> list[PromptTrace]:
    traces: list[PromptTrace] = []
    with load(args.pair, n_ctx=4096, policy="none", probe=False) as engine:
        prompts = select(load_prompts(args.prompts), args.per_category, from_end=True)
        chats = chat_prompts(engine, "code-edit-calibration")
        for temp in (0.0, 1.0):
            sampling = None if temp == 0 else SamplingParams(temperature=temp, seed=0)
            for group, tokens in ((prompts, args.max_tokens), (chats, args.chat_max_tokens)):
                got, _ = record_traces(engine, group, max_tokens=tokens, sampling=sampling,
                                       ignore_eos=temp > 0)
                traces += got
                print(f"recorded {len(got)} traces at temperature {temp:g}", flush=True)
    return traces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pair")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--traces", type=Path, help="refit these traces instead of recording")
    ap.add_argument("--prompts", default=str(SPECBENCH))
    ap.add_argument("--per-category", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--chat-max-tokens", type=int, default=256)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.traces:
        traces = TraceSet.load(args.traces).traces
    else:
        traces = record(args)
        TraceSet({"pair": args.pair, "source": "scripts/fit_copy_prior.py"},
                 traces).save(args.out / "traces.npz")
    result = {}
    for temp in (0.0, 1.0):
        at = [t for t in traces if t.temperature == temp]
        examples = [e for t in at for e in copy_examples(t)]
        model = CopyModel.fit(START, examples)
        check = compare(at)
        print(f"temperature {temp:g}: {len(examples)} copied positions, accepted "
              f"{np.mean([y[0] for _, y in examples]):.0%}")
        print("  " + summary_line(check))
        print("  weights: (" + ", ".join(f"{w:.3f}" for w in model.weights) + ")")
        for name, w in zip(FEATURES, model.weights, strict=True):
            print(f"    {name:<16} {w:+.3f}")
        result[f"{temp:g}"] = {"weights": model.weights, "precision": model.precision,
                               "examples": len(examples), "held_out": check}
    (args.out / "copy_prior.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
