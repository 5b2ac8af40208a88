"""The benchmark's PNG plots, drawn from a `BenchResult`.

matplotlib is a benchmark extra (`pip install svip-local[bench]`): it is imported only when
plots are drawn, with the Agg backend (no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from svip_local.bench.result import (
    BenchResult,
    entropy_bins,
    find_summary,
    label,
    ordered_policies,
    resolved_name,
    table_groups,
)
from svip_local.bench.runner import BASELINE
from svip_local.bench.validate import ORACLE
from svip_local.calibration import temperature_label
from svip_local.errors import InvalidRequestError

SVIP_GAMMA = 0.15


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
    """The PNGs `result` has data for, written to `out`; returns their paths."""
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
        groups = table_groups(rows, "specbench")
        policies = [p for p in ordered_policies(result, rows) if p != BASELINE]
        width = 0.8 / max(1, len(policies))
        colors = plt.get_cmap("tab20").colors
        for k, policy in enumerate(policies):
            vals = [s.speedup if (s := find_summary(rows, policy, g, policy == ORACLE))
                    and s.speedup else 0.0 for g in groups]
            ax.bar(np.arange(len(groups)) + k * width - 0.4 + width / 2, vals, width,
                   label=label(policy, resolved_name(rows, policy)), color=colors[k % 20])
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
        groups = table_groups(rows, "longform")[:-1]
        colors = plt.get_cmap("tab20").colors
        for k, policy in enumerate(ordered_policies(result, rows)):
            pts = [(int(g), s.speedup) for g in groups
                   if (s := find_summary(rows, policy, g, policy == ORACLE)) and s.speedup]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=colors[k % 20],
                        label=label(policy, resolved_name(rows, policy)))
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
