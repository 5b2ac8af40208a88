#!/usr/bin/env python3
"""`auto`'s regret against the best fixed policy of each category, chosen on other prompts.

    python scripts/bench_regret.py OUT/bench.json [--json OUT/regret.json]

From one `svip-local bench` run (every contestant on the same prompts, interleaved): for each
prompt, the fixed policy (every measured svip-local policy but `auto` and `auto@calibration`:
the target alone, fixed copies and drafts, `calibrated`) that was fastest on the OTHER prompts
of its category is the one `auto` is held against there, so the comparison does not reward a
choice made on the very prompts it is judged on. Speedups are per-prompt tokens/s over the
target alone's on the same prompt and repeat, averaged over repeats. Prints, per suite and
temperature, the category table (with the spread over prompts) and the overall line: the
geometric mean over categories of auto / best fixed, and auto and the fixed choice against
llama-cpp-python's `Llama` alone and with `LlamaPromptLookupDecoding`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

AUTOS = ("auto", "auto@calibration")
PEERS = ("llama-cpp-python", "llama-cpp-python+lookup")


def speedups(records: list[dict[str, Any]]) -> dict[tuple[str, str, float],
                                                     dict[str, dict[str, float]]]:
    """(suite, group, temperature) -> policy -> prompt -> mean speedup over repeats."""
    base = {(r["suite"], r["group"], r["temperature"], r["prompt_id"], r["repeat"]):
            r["generated"] / r["wall_s"] for r in records if r["policy"] == "none"}
    acc: dict[tuple[str, str, float], dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        b = base.get((r["suite"], r["group"], r["temperature"], r["prompt_id"], r["repeat"]))
        if b and r["wall_s"] > 0:
            acc[(r["suite"], r["group"], r["temperature"])][r["policy"]][r["prompt_id"]].append(
                r["generated"] / r["wall_s"] / b)
    return {k: {p: {q: statistics.fmean(v) for q, v in prompts.items()}
                for p, prompts in pol.items()} for k, pol in acc.items()}


def held_out_best(by_policy: dict[str, dict[str, float]], fixed: list[str]
                  ) -> dict[str, tuple[str, float]]:
    """Per prompt: the fixed policy fastest on the group's other prompts, and its speedup on
    this one (with a single prompt, the best on itself)."""
    prompts = sorted(by_policy["none"])
    out = {}
    for q in prompts:
        others = [o for o in prompts if o != q] or [q]
        pick = max(fixed, key=lambda f: statistics.fmean(by_policy[f][o] for o in others))
        out[q] = (pick, by_policy[pick][q])
    return out


def table(data: dict[tuple[str, str, float], dict[str, dict[str, float]]], suite: str,
          temperature: float) -> tuple[list[str], dict[str, Any]]:
    groups = sorted(g for (s, g, t) in data if s == suite and t == temperature)
    lines = [f"{suite}, temperature {temperature:g}",
             "| category | best fixed (chosen on other prompts) | auto | ratio | "
             "auto@calibration | ratio | Llama | Llama + lookup | auto / better peer |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    ratios: dict[str, list[float]] = defaultdict(list)
    summary: dict[str, Any] = {"categories": {}}
    for g in groups:
        pol = data[(suite, g, temperature)]
        fixed = [p for p in pol if p not in AUTOS and p not in PEERS]
        best = held_out_best(pol, fixed)
        prompts = sorted(best)
        mean_best = statistics.fmean(s for _, s in best.values())
        row: dict[str, Any] = {"best fixed": sorted({p for p, _ in best.values()}),
                               "best fixed speedup": mean_best}
        cells = []
        for a in AUTOS:
            if a in pol:
                sp = statistics.fmean(pol[a][q] for q in prompts)
                per = [pol[a][q] / best[q][1] for q in prompts]
                ratio = sp / mean_best
                ratios[a].append(ratio)
                row[a] = {"speedup": sp, "ratio": ratio, "spread": [min(per), max(per)]}
                cells += [f"{sp:.2f}", f"{ratio:.2f} ({min(per):.2f}–{max(per):.2f})"]
            else:
                cells += ["–", "–"]
        peer = {p: statistics.fmean(pol[p][q] for q in prompts) for p in PEERS if p in pol}
        row["peers"] = peer
        better = max(peer.values()) if peer else None
        if better and "auto" in row:
            row["auto / better peer"] = row["auto"]["speedup"] / better
        lines.append(f"| {g} | {', '.join(row['best fixed'])} ({mean_best:.2f}) | "
                     + " | ".join(cells) + " | "
                     + " | ".join(f"{peer[p]:.2f}" if p in peer else "–" for p in PEERS)
                     + " | " + (f"{row['auto / better peer']:.2f}"
                                if "auto / better peer" in row else "–") + " |")
        summary["categories"][g] = row
    for a in AUTOS:
        if ratios[a]:
            gm = math.exp(statistics.fmean(math.log(r) for r in ratios[a]))
            summary[a] = {"geomean": gm, "worst": min(ratios[a])}
            lines.append(f"- {a}: geometric mean over categories {gm:.3f} of the best fixed "
                         f"policy, worst category {min(ratios[a]):.3f}")
    return lines, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path, help="a bench.json")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    result = json.loads(args.bench.read_text())
    records = [r for r in result["records"] if not r["simulated"]]
    data = speedups(records)
    out = {}
    for suite in sorted({s for s, _, _ in data}):
        for temp in sorted({t for s, _, t in data if s == suite}):
            lines, summary = table(data, suite, temp)
            overall = [r for r in records if r["suite"] == suite and r["temperature"] == temp]
            totals = {p: statistics.fmean(
                r["generated"] / r["wall_s"] for r in overall if r["policy"] == p)
                for p in {r["policy"] for r in overall}}
            base = totals["none"]
            summary["overall"] = {p: v / base for p, v in totals.items()}
            lines.append("- overall (mean per-prompt tokens/s over the target alone's): "
                         + ", ".join(f"{p} {v / base:.3f}" for p, v in sorted(totals.items())))
            print("\n".join(lines), end="\n\n")
            out[f"{suite} T={temp:g}"] = summary
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
