#!/usr/bin/env python3
"""The measuring half of scripts/rpc_loopback.sh (which builds, starts the RPC servers and adds
the latency): the reference target split across RPC servers, the draft local.

1. Greedy identity: the target alone on this machine, then over RPC alone and with `auto`,
   on a few prompts: every token must match.
2. For each latency (its own endpoints, so its own calibration: the machine fingerprint
   holds them): `svip-local calibrate`'s work, then the target alone, `auto` with that
   calibration and the calibrated choice side by side on SpecBench prompts; then the target
   alone and `auto` as on a first run (a probe of a few seconds, no calibration).
Prints one table and writes rpc_loopback.json (and each run's report) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from svip_local import load
from svip_local.bench.prompts import load_prompts, select
from svip_local.bench.report import write_report
from svip_local.bench.result import BenchResult
from svip_local.bench.suite import BenchOptions, run_bench
from svip_local.calibration.machine import cpu_model
from svip_local.engine import Engine


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--draft", required=True)
    p.add_argument("--latency", action="append", required=True, metavar="MS=HOST:PORT,...",
                   help="an added latency and the endpoints that have it (repeatable)")
    p.add_argument("--how", default="", help="how the latency is made (for the report)")
    p.add_argument("--identity-prompts", type=int, default=3)
    p.add_argument("--identity-tokens", type=int, default=64)
    p.add_argument("--per-category", type=int, default=1)
    p.add_argument("--calibration-per-category", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    latencies = [(float(ms), eps) for ms, _, eps in (x.partition("=") for x in args.latency)]
    args.out.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(None)
    settings = {"n_ctx": args.n_ctx, "policy": "none"}

    identical = check_identity(args, select(prompts, 1)[:args.identity_prompts],
                               latencies[0][1], settings)
    rows = []
    for ms, endpoints in latencies:
        print(f"\n== added latency {ms:g} ms: {endpoints}", file=sys.stderr)
        with load(target=args.target, draft=args.draft, rpc_servers=endpoints,
                  **settings) as engine:
            calibrated = bench(engine, args, prompts, ("auto", "calibrated"), fresh=False)
            live = bench(engine, args, prompts, ("auto",), fresh=True)
        write_report(calibrated, args.out / f"{ms:g}ms-calibrated", plots=False)
        write_report(live, args.out / f"{ms:g}ms-live", plots=False)
        rows.append(row(ms, endpoints, calibrated, live))

    table = format_table(rows, identical, args.how)
    print("\n" + table)
    (args.out / "rpc_loopback.md").write_text(table + "\n", encoding="utf-8")
    (args.out / "rpc_loopback.json").write_text(json.dumps(
        {"cpu": cpu_model(), "identical": identical, "how": args.how, "rows": rows,
         "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1), encoding="utf-8")
    return 0 if identical else 1


def check_identity(args: argparse.Namespace, prompts: list[Any], endpoints: str,
                   settings: dict[str, Any]) -> bool:
    """The RPC target's greedy tokens, alone and under `auto`, against the local target's.

    The local reference loads without the CPU's repacked weights (SVIP_LOCAL_EXTRA_BUFTS=0):
    llama.cpp's RPC server keeps plain buffers, and repacked kernels round differently, so a
    near-tie can flip within a few tokens. Same kernels, same arithmetic: identical tokens."""
    texts = [p.text for p in prompts]
    os.environ["SVIP_LOCAL_EXTRA_BUFTS"] = "0"  # read at each model load
    try:
        with load(target=args.target, **settings) as local:
            want = [local.complete(t, max_tokens=args.identity_tokens).tokens for t in texts]
    finally:
        del os.environ["SVIP_LOCAL_EXTRA_BUFTS"]
    same = True
    with load(target=args.target, draft=args.draft, rpc_servers=endpoints,
              **settings) as remote:
        for policy in ("none", "auto"):
            got = [remote.complete(t, max_tokens=args.identity_tokens, policy=policy).tokens
                   for t in texts]
            ok = got == want
            same &= ok
            print(f"[identity] over RPC, {policy}: {'identical' if ok else 'DIFFERENT'} to the "
                  f"local target ({len(texts)} prompts x {args.identity_tokens} tokens)",
                  file=sys.stderr)
    return same


def bench(engine: Engine, args: argparse.Namespace, prompts: list[Any],
          policies: tuple[str, ...], *, fresh: bool) -> BenchResult:
    return run_bench(engine, BenchOptions(
        prompts, per_category=args.per_category, max_tokens=args.max_tokens, lengths=(),
        temperatures=(0.0,), policies=policies, calibrate=not fresh, fresh_auto=fresh,
        calibration_per_category=args.calibration_per_category))


def _overall(result: BenchResult, policy: str) -> Any:
    return next(s for s in result.summaries if s.group == "all" and s.policy == policy
                and not s.simulated)


def row(ms: float, endpoints: str, calibrated: BenchResult, live: BenchResult
        ) -> dict[str, Any]:
    base, auto, fixed = (_overall(calibrated, p) for p in ("none", "auto", "calibrated"))
    base_live, auto_live = (_overall(live, p) for p in ("none", "auto"))
    return {"latency_ms": ms, "endpoints": endpoints,
            "target_tps": base.mean_tps, "auto_calibrated_tps": auto.mean_tps,
            "auto_calibrated_speedup": auto.speedup, "auto_calibrated_ran": auto.resolved,
            "calibrated_tps": fixed.mean_tps, "calibrated_speedup": fixed.speedup,
            "calibrated_choice": fixed.resolved,
            "target_tps_live_run": base_live.mean_tps, "auto_live_tps": auto_live.mean_tps,
            "auto_live_speedup": auto_live.speedup, "auto_live_ran": auto_live.resolved,
            "prompts": base.runs}


def format_table(rows: list[dict[str, Any]], identical: bool, how: str) -> str:
    lines = [f"CPU: {cpu_model()}; latency added by {how or '?'}; greedy output over RPC "
             f"{'identical to' if identical else 'DIFFERENT from'} the local target's",
             "",
             "| added latency | target alone over RPC | auto, live (first run) | auto, "
             "calibrated | calibrated choice |",
             "|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['latency_ms']:g} ms | {r['target_tps']:.2f} tok/s "
            f"({r['target_tps_live_run']:.2f}) | {r['auto_live_tps']:.2f} "
            f"(×{r['auto_live_speedup']:.2f}) | {r['auto_calibrated_tps']:.2f} "
            f"(×{r['auto_calibrated_speedup']:.2f}) | {r['calibrated_choice']} "
            f"(×{r['calibrated_speedup']:.2f}) |")
    lines.append("")
    lines.append("Speedups are over the target alone timed in the same run (the live run's "
                 "target alone in parentheses); mean per-prompt tokens/s, greedy.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
