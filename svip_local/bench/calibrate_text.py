"""A calibration in words: for `svip-local calibrate` and the benchmark's report."""

from __future__ import annotations

from typing import Any

from svip_local.bench import copy_fit, predictors
from svip_local.bench.calibrate_search import HeldOut
from svip_local.calibration import Calibration, temperature_label


def held_out_line(validation: dict[str, Any]) -> str:
    """A stored `HeldOut` in words ('' for a calibration made without one)."""
    if not validation:
        return ""
    check = HeldOut(validation["in_sample"], validation["held_out"],
                    tuple(validation["choices"]))
    return (f"held-out: the folds' choices ({', '.join(check.choices)}) x{check.in_sample:.3f} "
            f"where chosen, x{check.held_out:.3f} on the other prompts (optimism "
            f"{check.optimism:.1%}: the simplest candidate within it is chosen)")


def summary_lines(cal: Calibration, top: int = 8) -> list[str]:
    """A human-readable account of a calibration (for the CLI)."""
    c = cal.costs
    lines = [
        f"pair: {cal.pair.target} + {cal.pair.draft}",
        f"machine: {cal.machine.cpu} | {cal.machine.gpu} | layers {cal.machine.n_gpu_layers} "
        f"| {cal.machine.threads} threads",
        "choice: " + "; ".join(f"{temperature_label(t.temperature)} {t.choice}"
                               for t in (cal.greedy, *cal.sampled)),
        "target verify ms (b=1,2,4,8,16): "
        + " ".join(f"{c.verify(b, c.base_depth) * 1e3:.1f}" for b in (1, 2, 4, 8, 16)),
        f"draft decode ms: {c.draft_s[0] * 1e3:.1f} (x{c.draft_s[0] / c.verify_s[0]:.2f} of "
        f"the target)  entropy ms: {c.entropy_s * 1e3:.2f}  sampling ms: "
        f"{c.sample_s * 1e3:.2f}",
        f"loop ms per round {c.round_s * 1e3:.3f}, per token {c.token_s * 1e3:.3f}, per draft "
        f"step {c.step_s * 1e3:.3f}",
    ]
    for at in (cal.greedy, *cal.sampled):
        lines.append(f"simulated, {temperature_label(at.temperature)} (mean of per-prompt "
                     "tokens/s, prefill included):")
        if at.validation:
            lines.append("  " + held_out_line(at.validation))
        if at.predictors:
            lines.append("  " + predictors.summary_line(at.predictors))
        if at.copy_prediction:
            lines.append("  " + copy_fit.summary_line(at.copy_prediction))
        none = next((s for s in at.simulated if s["policy"] == "none"), None)
        for s in at.simulated[:top]:
            rel = f"  x{s['mean_tokens_per_s'] / none['mean_tokens_per_s']:.3f}" if none else ""
            lines.append(f"  {s['policy']:<26} {s['mean_tokens_per_s']:8.2f}{rel}  total "
                         f"{s['tokens_per_s']:6.2f}  draft "
                         f"{s['mean_draft']:.2f}  acceptance {s['acceptance']:.0%}")
    return lines
