#!/usr/bin/env python3
"""The target alone in svip-local's engine against llama-cpp-python's own high-level `Llama`:
what a Python user would pick instead of us, on the same file, prompts and threads.

    python scripts/bench_parity.py --target T.gguf --prompts ../shared/data/spec_bench_dev.jsonl

One process; every prompt runs on each contestant in a rotating order before the next prompt
starts, so a slow spell of a shared machine hits all of them. Every run pays its own prefill
(both caches emptied) and is greedy; time is prefill + generation, as in `svip-local bench`.
Contestants: the engine with llama.cpp's extra buffer types as it ships (repacked weights, no
AMX), the engine with them off (SVIP_LOCAL_EXTRA_BUFTS=0: the old default), and `Llama` (its
defaults, which share this process's buffer-type list). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from svip_local import Engine
from svip_local.bench.prompts import load_prompts, select
from svip_local.calibration.machine import cpu_model
from svip_local.native import EXTRA_BUFFER_TYPES

Run = Callable[[str, int], int]  # (prompt, max tokens) -> tokens generated


def engine_runner(target: str, n_ctx: int, threads: int, *, extra_bufts: bool) -> Run:
    os.environ["SVIP_LOCAL_EXTRA_BUFTS"] = "1" if extra_bufts else "0"  # read at model load
    engine = Engine(target, n_ctx=n_ctx, n_threads=threads, policy="none")
    os.environ.pop("SVIP_LOCAL_EXTRA_BUFTS")

    def run(prompt: str, max_tokens: int) -> int:
        engine.reset()
        return engine.complete(prompt, max_tokens=max_tokens).stats.generated

    return run


def llama_runner(target: str, n_ctx: int, threads: int) -> Run:
    from llama_cpp import Llama

    llm = Llama(target, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                verbose=False)

    def run(prompt: str, max_tokens: int) -> int:
        llm.reset()  # no prefix reuse: every run pays its prefill, like the engine's
        out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)
        return int(out["usage"]["completion_tokens"])

    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--prompts", default=None, help="SpecBench-style jsonl (default: built-in)")
    p.add_argument("--per-category", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--out", default="bench-out/parity.json")
    args = p.parse_args()

    prompts = select(load_prompts(args.prompts), args.per_category)
    contestants: dict[str, Run] = {
        "svip-local engine (as shipped)": engine_runner(args.target, args.n_ctx, args.threads,
                                                         extra_bufts=True),
        "svip-local engine, extra buffer types off": engine_runner(
            args.target, args.n_ctx, args.threads, extra_bufts=False),
        "llama-cpp-python Llama": llama_runner(args.target, args.n_ctx, args.threads),
    }
    names = list(contestants)
    for name in names:  # warm-up: fault the weights in
        contestants[name](prompts[0].text, 8)
    rates: dict[str, list[float]] = {n: [] for n in names}
    tokens: dict[str, int] = dict.fromkeys(names, 0)
    seconds: dict[str, float] = dict.fromkeys(names, 0.0)
    for r in range(args.repeats):
        for i, prompt in enumerate(prompts):
            shift = (r * len(prompts) + i) % len(names)
            for name in [*names[shift:], *names[:shift]]:
                t0 = time.perf_counter()
                n = contestants[name](prompt.text, args.max_tokens)
                dt = time.perf_counter() - t0
                rates[name].append(n / dt)
                tokens[name] += n
                seconds[name] += dt
    base = statistics.fmean(rates[names[-1]])
    print(f"CPU: {cpu_model()}, {args.threads} threads; extra buffer types as shipped: "
          f"{', '.join(EXTRA_BUFFER_TYPES) or 'none'}; {len(prompts)} prompts x "
          f"{args.repeats} x {args.max_tokens} tokens, prefill included")
    print(f"{'':44} {'mean tok/s':>10} {'total tok/s':>11} {'vs Llama':>9}")
    rows = []
    for name in names:
        mean = statistics.fmean(rates[name])
        total = tokens[name] / seconds[name]
        print(f"{name:44} {mean:10.2f} {total:11.2f} {mean / base:9.3f}")
        rows.append({"contestant": name, "mean_tps": mean, "total_tps": total,
                     "vs_llama": mean / base, "per_run_tps": rates[name]})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu_model(), "threads": args.threads,
                               "extra_buffer_types": list(EXTRA_BUFFER_TYPES),
                               "prompts": [q.id for q in prompts], "max_tokens": args.max_tokens,
                               "repeats": args.repeats, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
