"""Benchmark output: a markdown report shaped like the SVIP paper's tables, a terminal table,
and the files one run writes (report.md, bench.json and the plots of `plots`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from svip_local.bench import predictors, python_peer
from svip_local.bench.calibrate_text import held_out_line
from svip_local.bench.plots import write_plots
from svip_local.bench.result import (
    OVERALL,
    BenchResult,
    find_summary,
    label,
    ordered_policies,
    resolved_name,
    table_groups,
)
from svip_local.bench.runner import BASELINE, CALIBRATED_AUTO, Summary
from svip_local.bench.validate import ORACLE, Check
from svip_local.calibration import temperature_label

SUITES = {"specbench": "SpecBench", "longform": "MT-Bench long-form",
          "code-edit": "Code edits (chat)"}


def write_report(result: BenchResult, out_dir: str | Path, *, plots: bool = True) -> list[Path]:
    """report.md, bench.json and (with `plots`) the PNGs; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if plots:
        written += write_plots(result, out)
    md = out / "report.md"
    md.write_text(markdown(result, [p.name for p in written]), encoding="utf-8")
    js = out / "bench.json"
    js.write_text(json.dumps(result.to_dict(), indent=1), encoding="utf-8")
    return [md, js, *written]


def markdown(result: BenchResult, images: Sequence[str] = ()) -> str:
    meta = result.meta
    lines = [f"# svip-local benchmark: {meta.get('pair', '')}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k != "pair"]
    lines += ["", "Speed is generated tokens per second with prefill included. *Speedup* is the "
              "SVIP paper's: mean over prompts of per-prompt tokens/s, divided by the target "
              "alone's on the same prompts; *total* is total tokens over total time. The "
              "oracle is simulated (the cost model replaying the target-alone runs' traces): the "
              "best any choice of draft lengths could do with this draft model, so a policy "
              "that also copies tokens from the context (+ lookup) can pass it. A sampled "
              "trace is replayed on 8 draws of which draft tokens are accepted (each position "
              "with the chance speculative sampling accepts there). Sampled runs "
              "(temperature > 0) ignore end of text, so every policy generates the same number "
              "of tokens; greedy runs stop at it (their text is the same for every policy).", ""]
    temps = sorted({s.temperature for s in result.summaries})
    lines += ["## Headline (speedup over the target alone, all prompts)", ""]
    lines += [line for suite in SUITES for t in temps for line in _headline(result, suite, t)]
    lines.append("")
    for suite, title in SUITES.items():
        for temp in temps:
            rows = [s for s in result.summaries if s.suite == suite and s.temperature == temp]
            if not rows:
                continue
            groups = table_groups(rows, suite)
            kind = "speedup by generation length (Table 2)" if suite == "longform" else \
                "speedup by category (Table 1)" if suite == "specbench" else \
                "speedup by category"
            lines += [f"## {title}, {temperature_label(temp)}: {kind}", ""]
            lines += _speedup_table(result, rows, groups, suite)
            lines += ["", f"### {title}, {temperature_label(temp)}: all prompts", ""]
            lines += _detail_table(result, rows, suite, temp)
            lines.append("")
    for temp in sorted({c.temperature for c in result.checks}):
        lines += [f"## Simulator vs measurement ({temperature_label(temp)}, total tokens/s)", ""]
        lines += _check_table([c for c in result.checks if c.temperature == temp],
                              result.policies)
        lines.append("")
    if result.peer_sweep:
        lines += ["## llama.cpp's llama-speculative-simple: sweep (greedy, mean tokens/s)", "",
                  "| n_max | p_min | tokens/s | acceptance |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['n_max']} | {r['p_min']:g} | {r['mean_tps']:.2f} | "
                  f"{r['acceptance']:.0%} |" for r in result.peer_sweep]
        lines.append("")
    if result.calibration:
        for at in (result.calibration, *result.calibration.get("sampled", [])):
            heading = temperature_label(at.get("temperature", 0.0))
            lines += [f"## Calibration, {heading} (simulated on the calibration prompts)", "",
                      f"Choice: `{at['choice']}`; svip-cost rate R = {at['cost_rate']:.3g} "
                      "tokens/s.", "", *([held_out_line(at["validation"]), ""]
                                         if at.get("validation") else []),
                      "| policy | mean tokens/s | total tokens/s | mean draft "
                      "| acceptance |", "|---|---:|---:|---:|---:|"]
            lines += [f"| {c['policy']} | {c['mean_tokens_per_s']:.2f} | "
                      f"{c['tokens_per_s']:.2f} | {c['mean_draft']:.2f} | "
                      f"{c['acceptance']:.0%} |" for c in at["simulated"][:12]]
            if at.get("predictors"):
                lines += ["", predictors.summary_line(at["predictors"])]
            lines.append("")
    if result.predictors:
        lines += ["## How well each rule predicts acceptance (held-out prompts)", "",
                  "On the benchmark's own target-alone traces, each fold of prompts predicted by "
                  "rules fitted on the others: the entropy map (SVIP's signal), the top-1 "
                  "probability (llama.cpp's p_min), both as monotone maps, and the learnt head "
                  "(SpecDec++). Log-loss is against the traces' labels (greedy: argmax match; "
                  "sampled: the chance rejection sampling accepts); lower is better. ROC AUC: "
                  "how well each ranks accepted above rejected tokens.", "",
                  "| temperature | positions | predictor | log-loss | ROC AUC |",
                  "|---|---:|---|---:|---:|"]
        for at in result.predictors:
            for name, r in at["predictors"].items():
                lines.append(f"| {temperature_label(at['temperature'])} | {at['positions']} | "
                             f"{name} | {r['log_loss']:.4f} | {r['auc']:.3f} |")
            lines.append(f"| {temperature_label(at['temperature'])} | {at['positions']} | "
                         f"constant (base rate {at['base_rate']:.2f}) | "
                         f"{at['base_log_loss']:.4f} | 0.500 |")
        lines.append("")
    if images:
        lines += ["## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images] + [""]
    return "\n".join(lines)


def _headline(result: BenchResult, suite: str, temp: float) -> list[str]:
    """One line per suite and temperature: the comparisons the benchmark exists for."""
    rows = {s.policy: s for s in result.summaries if s.suite == suite and s.group == OVERALL
            and s.temperature == temp and (s.policy == ORACLE) == s.simulated}
    base = rows.get(BASELINE)
    if base is None:
        return []

    def pick(prefix: str) -> Summary | None:
        found = [s for p, s in rows.items() if p.startswith(prefix) and s.speedup is not None]
        return max(found, key=lambda s: s.speedup or 0.0) if found else None

    named = [("best constant", pick("constant:")),
             ("SVIP", rows.get("svip:0.3") or pick("svip:")),
             ("cost-aware SVIP", pick("svip-cost")), ("SpecDec++", pick("specdec:")
                                                      or rows.get("specdec")),
             ("cost-aware SpecDec++", pick("specdec-cost")),
             ("calibrated", rows.get("calibrated")),
             ("best lookup", pick("lookup:")),
             ("auto", rows.get("auto")), ("auto, calibrated", rows.get(CALIBRATED_AUTO)),
             ("llama.cpp best", pick("llama.cpp:")),
             ("llama-cpp-python best", pick(python_peer.PLAIN)), ("oracle", rows.get(ORACLE))]
    parts = [f"target alone {base.mean_tps:.2f} tok/s"]
    parts += [f"{label(s.policy, s.resolved)} x{s.speedup:.2f}" for _, s in named
              if s is not None and s.speedup is not None]
    found = dict(named)
    for a, b in (("SVIP", "best constant"), ("cost-aware SVIP", "SVIP"),
                 ("SpecDec++", "cost-aware SVIP"), ("cost-aware SpecDec++", "cost-aware SVIP"),
                 ("calibrated", "SVIP"), ("auto", "SVIP"), ("auto", "calibrated"),
                 ("auto", "best lookup"), ("auto, calibrated", "auto"),
                 ("SVIP", "llama.cpp best"), ("auto", "llama.cpp best"),
                 ("auto", "llama-cpp-python best")):
        x, y = found.get(a), found.get(b)
        if x and y and x.speedup and y.speedup:
            # a calibrated choice that is the very policy it is compared with differs by noise
            same = " (same policy: run-to-run spread)" if x.resolved == y.policy else ""
            parts.append(f"{a} vs {b}: {x.speedup / y.speedup - 1:+.1%}{same}")
    return [f"- {SUITES[suite]}, {temperature_label(temp)}: " + "; ".join(parts)]


def _speedup_table(result: BenchResult, rows: Sequence[Summary], groups: Sequence[str],
                   suite: str) -> list[str]:
    head = [g if suite == "specbench" or g == OVERALL else f"{g} tok" for g in groups]
    out = ["| method | " + " | ".join(head) + " |", "|---|" + "---:|" * len(groups)]
    for policy in ordered_policies(result, rows):
        cells = []
        for g in groups:
            s = find_summary(rows, policy, g, policy == ORACLE)
            if s is None or s.speedup is None:
                cells.append("–")
            elif policy == BASELINE:
                cells.append(f"1.00 ({s.mean_tps:.1f} tok/s)")
            else:
                cells.append(f"{s.speedup:.2f}")
        resolved = resolved_name(rows, policy)
        out.append(f"| {label(policy, resolved)} | " + " | ".join(cells) + " |")
    return out


def _detail_table(result: BenchResult, rows: Sequence[Summary], suite: str,
                  temp: float) -> list[str]:
    checks = {(c.suite, c.policy): c for c in result.checks
              if c.group == OVERALL and c.temperature == temp}
    out = ["| method | runs | tok/s mean ± sd | tok/s total | speedup | speedup total | "
           "per-prompt range | acceptance | draft len | accepted len | nodes | predicted tok/s "
           "| error |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for policy in ordered_policies(result, rows):
        s = find_summary(rows, policy, OVERALL, policy == ORACLE)
        if s is None:
            continue
        c = checks.get((suite, policy))
        spread = f"{s.speedup_min:.2f}–{s.speedup_max:.2f}" if s.speedup_min is not None else "–"
        out.append(
            f"| {label(policy, s.resolved)} | {s.runs} | {s.mean_tps:.2f} ± {s.sd_tps:.2f} | "
            f"{s.total_tps:.2f} | {_num(s.speedup)} | {_num(s.speedup_total)} | {spread} | "
            f"{s.acceptance:.0%} | {s.mean_draft:.2f} | {s.mean_accepted:.2f} | "
            f"{s.mean_nodes:.2f} | "
            f"{f'{c.predicted_tps:.2f}' if c else '–'} | {f'{c.error:+.1%}' if c else '–'} |")
    return out


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _check_table(all_checks: Sequence[Check], policies: Sequence[str]) -> list[str]:
    """Per suite: predicted and measured total tokens/s over all its prompts, then the error
    of each group (category or length); the checks of one temperature. The speedup error
    compares predicted and measured speedups over the target alone: a shared machine that
    runs slower than when it was calibrated moves every rate, not the ratios."""
    out: list[str] = []
    speedup_errors: list[tuple[float, str, str]] = []
    for suite in dict.fromkeys(c.suite for c in all_checks):
        checks = {(c.group, c.policy): c for c in all_checks if c.suite == suite}
        groups = table_groups(checks.values(), suite)[:-1]
        base = checks.get((OVERALL, BASELINE))
        out += [f"{suite}:", "", "| method | predicted | measured | error | speedup error | "
                + " | ".join(groups) + " |", "|---|---:|---:|---:|---:|" + "---:|" * len(groups)]
        for policy in policies:
            total = checks.get((OVERALL, policy))
            if total is None:
                continue
            cells = [f"{c.error:+.1%}" if (c := checks.get((g, policy))) else "–"
                     for g in groups]
            relative = "–"
            if base is not None and policy != BASELINE:
                err = (1 + total.error) / (1 + base.error) - 1
                speedup_errors.append((err, policy, suite))
                relative = f"{err:+.1%}"
            out.append(f"| {label(policy)} | {total.predicted_tps:.2f} | "
                       f"{total.measured_tps:.2f} | {total.error:+.1%} | {relative} | "
                       + " | ".join(cells) + " |")
        out.append("")
    worst = max((c for c in all_checks if c.group == OVERALL), key=lambda c: abs(c.error))
    out.append(f"Largest error over a whole suite: {worst.error:+.1%} ({label(worst.policy)}, "
               f"{worst.suite}).")
    if speedup_errors:
        err, policy, suite = max(speedup_errors, key=lambda e: abs(e[0]))
        out.append(f"Largest speedup error: {err:+.1%} ({label(policy)}, {suite}).")
    return out


def console_table(result: BenchResult, *, suite: str = "specbench", temperature: float = 0.0
                  ) -> str:
    """A plain-text table of one suite's overall results (for a terminal)."""
    rows = [s for s in result.summaries if s.suite == suite and s.temperature == temperature
            and s.group == OVERALL]
    checks = {c.policy: c for c in result.checks if c.suite == suite and c.group == OVERALL
              and c.temperature == temperature}
    head = (f"{'method':<34} {'tok/s':>7} {'total':>7} {'speedup':>7} {'accept':>7} "
            f"{'draft':>6} {'acc.len':>7} {'pred.':>7}")
    lines = [f"{suite}, {temperature_label(temperature)} (tokens/s, prefill included)", head,
             "-" * len(head)]
    for policy in ordered_policies(result, rows):
        s = find_summary(rows, policy, OVERALL, policy == ORACLE)
        if s is None:
            continue
        c = checks.get(policy)
        lines.append(f"{label(policy, s.resolved)[:34]:<34} {s.mean_tps:7.2f} {s.total_tps:7.2f} "
                     f"{_num(s.speedup):>7} {s.acceptance:7.0%} {s.mean_draft:6.2f} "
                     f"{s.mean_accepted:7.2f} {f'{c.predicted_tps:.2f}' if c else '–':>7}")
    return "\n".join(lines)
