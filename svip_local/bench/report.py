"""Benchmark output: a markdown report shaped like the SVIP paper's tables, JSON, PNG plots.

matplotlib is a benchmark extra (`pip install svip-local[bench]`): it is imported only when
plots are drawn, with the Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from svip_local.bench import peer, predictors, python_peer
from svip_local.bench.calibrate import held_out_line
from svip_local.bench.prompts import CATEGORIES
from svip_local.bench.runner import BASELINE, CALIBRATED_AUTO, RunRecord, Summary
from svip_local.bench.traces import PromptTrace
from svip_local.bench.validate import ORACLE, Check
from svip_local.calibration import temperature_label
from svip_local.errors import InvalidRequestError
from svip_local.policies import label as policy_label

OVERALL = "all"
SUITES = {"specbench": "SpecBench", "longform": "MT-Bench long-form",
          "code-edit": "Code edits (chat)"}
SVIP_GAMMA = 0.15


@dataclass
class BenchResult:
    """Everything one `svip-local bench` produced."""

    meta: dict[str, Any]
    records: list[RunRecord]
    predicted: list[RunRecord]
    summaries: list[Summary]  # measured and simulated (Summary.simulated)
    checks: list[Check]
    policies: list[str]  # benchmark order (the peer's best setting included)
    peer_sweep: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    traces: list[PromptTrace] = field(default_factory=list)
    # Per temperature, how well each rule predicts acceptance on these traces' prompts,
    # held out by folds (`bench.predictors.compare`).
    predictors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "policies": self.policies,
                "summaries": [s.to_dict() for s in self.summaries],
                "validation": [c.to_dict() for c in self.checks],
                "peer_sweep": self.peer_sweep, "calibration": self.calibration,
                "acceptance_by_entropy": entropy_bins(self.traces),
                "acceptance_prediction": self.predictors,
                "records": [r.to_dict() for r in self.records],
                "predicted": [r.to_dict() for r in self.predicted]}


def label(policy: str, resolved: str = "") -> str:
    """How a policy spec (or the oracle, or llama.cpp's binary) reads in a table."""
    if policy == ORACLE:
        return "oracle (simulated)"
    if policy == CALIBRATED_AUTO:
        return "auto, from the calibration"
    if peer.handles(policy):
        return peer.label(policy)
    if python_peer.handles(policy):
        return resolved or policy
    return policy_label(policy, resolved)


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


# -- markdown ------------------------------------------------------------------------------------

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
            groups = _groups(rows, suite)
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


def _groups(rows: Iterable[Summary | Check], suite: str) -> list[str]:
    """The groups present, in table order: categories as the paper, lengths ascending."""
    present = {s.group for s in rows} - {OVERALL}
    if suite == "specbench":
        ordered = [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))
    else:
        ordered = sorted(present, key=lambda g: (int(g), "") if g.isdigit() else (math.inf, g))
    return [*ordered, OVERALL]


def _ordered_policies(result: BenchResult, rows: Sequence[Summary]) -> list[str]:
    present = {s.policy for s in rows}
    return [p for p in [*result.policies, ORACLE] if p in present]


def _find(rows: Sequence[Summary], policy: str, group: str, simulated: bool) -> Summary | None:
    return next((s for s in rows if s.policy == policy and s.group == group
                 and s.simulated == simulated), None)


def _speedup_table(result: BenchResult, rows: Sequence[Summary], groups: Sequence[str],
                   suite: str) -> list[str]:
    head = [g if suite == "specbench" or g == OVERALL else f"{g} tok" for g in groups]
    out = ["| method | " + " | ".join(head) + " |", "|---|" + "---:|" * len(groups)]
    for policy in _ordered_policies(result, rows):
        cells = []
        for g in groups:
            s = _find(rows, policy, g, policy == ORACLE)
            if s is None or s.speedup is None:
                cells.append("–")
            elif policy == BASELINE:
                cells.append(f"1.00 ({s.mean_tps:.1f} tok/s)")
            else:
                cells.append(f"{s.speedup:.2f}")
        resolved = _resolved(rows, policy)
        out.append(f"| {label(policy, resolved)} | " + " | ".join(cells) + " |")
    return out


def _resolved(rows: Sequence[Summary], policy: str) -> str:
    s = next((r for r in rows if r.policy == policy and r.group == OVERALL), None)
    return s.resolved if s else ""


def _detail_table(result: BenchResult, rows: Sequence[Summary], suite: str,
                  temp: float) -> list[str]:
    checks = {(c.suite, c.policy): c for c in result.checks
              if c.group == OVERALL and c.temperature == temp}
    out = ["| method | runs | tok/s mean ± sd | tok/s total | speedup | speedup total | "
           "per-prompt range | acceptance | draft len | accepted len | nodes | predicted tok/s "
           "| error |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for policy in _ordered_policies(result, rows):
        s = _find(rows, policy, OVERALL, policy == ORACLE)
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
        groups = _groups(checks.values(), suite)[:-1]
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


# -- data for plots ----------------------------------------------------------------------------

def entropy_bins(traces: Sequence[PromptTrace], bins: int = 12) -> list[dict[str, float]]:
    """Mean acceptance of a draft token per draft-entropy bin (quantile bins), per
    temperature: greedily whether the draft's argmax is the target's token, sampled the
    chance rejection sampling accepts there."""
    rows = []
    for temp in sorted({t.temperature for t in traces}):
        same = [t for t in traces if t.temperature == temp]
        ent = np.concatenate([t.entropy[:t.generated] for t in same])
        acc = np.concatenate([t.acceptance[:t.generated] for t in same])
        if len(ent) == 0:
            continue
        edges = np.unique(np.quantile(ent, np.linspace(0, 1, bins + 1)))
        for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            sel = (ent >= lo) & ((ent <= hi) if i == len(edges) - 2 else (ent < hi))
            if sel.any():
                rows.append({"temperature": temp, "entropy": float(np.median(ent[sel])),
                             "acceptance": float(acc[sel].mean()), "n": int(sel.sum())})
    return rows


# -- plots --------------------------------------------------------------------------------------

def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise InvalidRequestError(
            "plots need matplotlib: pip install 'svip-local[bench]' (or pass --no-plots)"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(result: BenchResult, out: Path) -> list[Path]:
    plt = _pyplot()
    written = []
    for name, draw in (("speedup_by_category.png", _plot_categories),
                       ("speedup_by_length.png", _plot_lengths),
                       ("draft_lengths.png", _plot_lengths_hist),
                       ("acceptance_vs_entropy.png", _plot_entropy),
                       ("acceptance_calibration.png", _plot_reliability)):
        fig = draw(plt, result)
        if fig is not None:
            fig.savefig(out / name, dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(out / name)
    return written


def _temps(result: BenchResult, suite: str) -> list[float]:
    return sorted({s.temperature for s in result.summaries if s.suite == suite})


def _plot_categories(plt: Any, result: BenchResult) -> Any:
    temps = _temps(result, "specbench")
    if not temps:
        return None
    fig, axes = plt.subplots(len(temps), 1, figsize=(13, 4 * len(temps)), squeeze=False)
    for ax, temp in zip(axes[:, 0], temps, strict=True):
        rows = [s for s in result.summaries if s.suite == "specbench" and s.temperature == temp]
        groups = _groups(rows, "specbench")
        policies = [p for p in _ordered_policies(result, rows) if p != BASELINE]
        width = 0.8 / max(1, len(policies))
        colors = plt.get_cmap("tab20").colors
        for k, policy in enumerate(policies):
            vals = [s.speedup if (s := _find(rows, policy, g, policy == ORACLE)) and s.speedup
                    else 0.0 for g in groups]
            ax.bar(np.arange(len(groups)) + k * width - 0.4 + width / 2, vals, width,
                   label=label(policy, _resolved(rows, policy)), color=colors[k % 20])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(np.arange(len(groups)), groups)
        ax.set_ylabel("speedup over target alone")
        ax.set_title(f"SpecBench, {temperature_label(temp)}")
        ax.legend(fontsize=7, ncol=4)
    return fig


def _plot_lengths(plt: Any, result: BenchResult) -> Any:
    temps = _temps(result, "longform")
    if not temps:
        return None
    fig, axes = plt.subplots(1, len(temps), figsize=(7 * len(temps), 4.5), squeeze=False)
    for ax, temp in zip(axes[0], temps, strict=True):
        rows = [s for s in result.summaries if s.suite == "longform" and s.temperature == temp]
        groups = _groups(rows, "longform")[:-1]
        colors = plt.get_cmap("tab20").colors
        for k, policy in enumerate(_ordered_policies(result, rows)):
            pts = [(int(g), s.speedup) for g in groups
                   if (s := _find(rows, policy, g, policy == ORACLE)) and s.speedup]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=colors[k % 20],
                        label=label(policy, _resolved(rows, policy)))
        ax.set_xscale("log", base=2)
        ax.set_xticks([int(g) for g in groups], groups)
        ax.minorticks_off()
        ax.set_xlabel("generated tokens")
        ax.set_ylabel("speedup over target alone")
        ax.set_title(f"MT-Bench long-form, {temperature_label(temp)}")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def _plot_lengths_hist(plt: Any, result: BenchResult) -> Any:
    """Drafted, accepted and verified (a tree's every node) tokens per round for the policies
    that choose a length or build trees (constant chains and the target alone would be single
    bars)."""
    recs = [r for r in result.records if r.temperature == 0 and any(r.draft_lengths)]
    policies = [p for p in result.policies if (not p.startswith("constant:") or "+" in p)
                and any(r.policy == p for r in recs)]
    if not policies:
        return None
    cols = min(4, len(policies))
    rows = math.ceil(len(policies) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(policies):]:
        ax.set_visible(False)
    for ax, policy in zip(axes.flat, policies, strict=False):
        runs = [r for r in recs if r.policy == policy]
        draft = np.concatenate([r.draft_lengths for r in runs]).astype(int)
        acc = np.concatenate([r.accepted_lengths for r in runs]).astype(int)
        nodes = np.concatenate([r.node_counts or r.draft_lengths for r in runs]).astype(int)
        xs = np.arange(max(int(draft.max()), int(nodes.max())) + 1)
        ax.bar(xs - 0.27, np.bincount(draft, minlength=len(xs)), 0.27, label="drafted")
        ax.bar(xs, np.bincount(acc, minlength=len(xs)), 0.27, label="accepted")
        ax.bar(xs + 0.27, np.bincount(nodes, minlength=len(xs)), 0.27, label="verified")
        ax.set_xticks(xs[:: max(1, len(xs) // 12)])
        ax.set_title(label(policy, runs[0].resolved), fontsize=9)
        ax.set_xlabel("tokens per round")
    axes[0, 0].set_ylabel("rounds")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Drafted, accepted and verified tokens per round (greedy)")
    fig.tight_layout()
    return fig


def _plot_entropy(plt: Any, result: BenchResult) -> Any:
    bins = entropy_bins(result.traces)
    if not bins:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for temp in sorted({b["temperature"] for b in bins}):
        at = [b for b in bins if b["temperature"] == temp]
        ax.plot([b["entropy"] for b in at], [b["acceptance"] for b in at], "o",
                label=f"benchmark traces, {temperature_label(temp)}")
    grid = np.linspace(0, max(b["entropy"] for b in bins) * 1.05, 200)
    ax.plot(grid, np.clip(1 - np.sqrt(SVIP_GAMMA * grid), 0, 1), "--",
            label="SVIP bound 1 - sqrt(0.15 H)")
    for at in (result.calibration, *result.calibration.get("sampled", [])) \
            if result.calibration else ():
        acc = at["acceptance"]
        ax.plot(acc["knots"], acc["now"], "-",
                label=f"fitted map (calibration, {temperature_label(at.get('temperature', 0.0))})")
    ax.axvline(0.3 ** 2 / SVIP_GAMMA, color="grey", linewidth=0.8, label="SVIP h=0.3 stop")
    ax.set_xlabel("draft entropy (nats)")
    ax.set_ylabel("P(draft token accepted)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    return fig


def _plot_reliability(plt: Any, result: BenchResult) -> Any:
    """Calibration plot: mean predicted against mean observed acceptance, per predictor and
    temperature, on held-out prompts (a calibrated rule lies on the diagonal)."""
    if not result.predictors:
        return None
    fig, axes = plt.subplots(1, len(result.predictors), figsize=(5.5 * len(result.predictors),
                                                                 4.8), squeeze=False)
    for ax, at in zip(axes[0], result.predictors, strict=True):
        for name, r in at["predictors"].items():
            bins = r["reliability"]
            ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], "o-",
                    label=f"{name} (log-loss {r['log_loss']:.3f}, AUC {r['auc']:.2f})")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_title(f"held-out prompts, {temperature_label(at['temperature'])}")
        ax.set_xlabel("predicted P(accepted)")
        ax.set_ylabel("observed acceptance")
        ax.legend(fontsize=8)
    return fig


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
    for policy in _ordered_policies(result, rows):
        s = _find(rows, policy, OVERALL, policy == ORACLE)
        if s is None:
            continue
        c = checks.get(policy)
        lines.append(f"{label(policy, s.resolved)[:34]:<34} {s.mean_tps:7.2f} {s.total_tps:7.2f} "
                     f"{_num(s.speedup):>7} {s.acceptance:7.0%} {s.mean_draft:6.2f} "
                     f"{s.mean_accepted:7.2f} {f'{c.predicted_tps:.2f}' if c else '–':>7}")
    return "\n".join(lines)
