"""The structured benchmark's output: structured.md (tables in the SpecBench report's style),
structured.json, and a terminal table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from svip_local.bench import peer as llama_peer, python_peer
from svip_local.bench.structured_records import (
    BASELINE,
    FREE_BASELINE,
    StructuredRun,
    parse_contestant,
)
from svip_local.bench.structured_summary import (
    OVERALL,
    StructuredSummary,
    acceptance_pairs,
    find,
    gains,
    summarize,
)
from svip_local.bench.structured_tasks import KINDS
from svip_local.calibration import temperature_label
from svip_local.policies import label as policy_label

_AIDS = {"": "", "bare": ", no aids", "no-forced": ", no forced tokens",
         "no-mask": ", no draft mask", "free": ", free text"}
_SPECIAL = {FREE_BASELINE: "target alone, free text", BASELINE: "target alone, constrained",
            "none": "target + forced tokens"}

EXPLAIN = (
    "Speed is generated tokens per second with prefill included, the mean over tasks. "
    "*× constrained* divides it by the constrained target alone's (`none/bare`: the target "
    "under the grammar's mask, nothing proposed) on the same tasks, *× free* by the "
    "unconstrained target alone's (`none/free`: the same prompts with no constraint, whose "
    "replies differ). *stop*: replies that ended by themselves, not at max_tokens; *valid*: "
    "of those, the share that parses and validates with `jsonschema` (a tool task: every "
    "call names one of its tools and its arguments validate against that tool's parameters; "
    "a regex task: `re.fullmatch`). *forced*: accepted forced tokens over generated tokens. "
    "*accept*: accepted over proposed tokens, forced ones included (*draft*: without them). "
    "*mask*: milliseconds per generated token in the grammar (masks, checks). *predicted*: "
    "the cost model's tokens/s for the rounds each run actually ran — every round's "
    "verification rows, draft catch-up and steps and per-round and per-token work priced "
    "by this machine's calibrated cost model (as the simulator prices a replayed round), plus "
    "the prefill and the run's measured mask seconds; the error in brackets is predicted / "
    "measured speed − 1; *predicted × constrained* divides a contestant's predicted speed by "
    "the constrained target alone's (the simulator's speedup from the rounds run: forced-token "
    "share, copies, drafts). *decode × free*: decoding speed (prefill excluded) over the "
    "unconstrained target alone's: what the mask costs per generated token. Contestants: "
    "`SPEC` runs with both aids (forced tokens proposed "
    "without a draft step; draft tokens from the draft's masked logits), `/no-forced`, "
    "`/no-mask` and `/bare` turn one or both off, `/free` has no constraint.")


def contestant_label(name: str) -> str:
    """How a contestant reads in a table."""
    if name in _SPECIAL:
        return _SPECIAL[name]
    c = parse_contestant(name)
    if python_peer.handles(c.spec):
        return python_peer.label(c.spec) + " + JSON grammar"
    if llama_peer.handles(c.spec):
        return llama_peer.label(c.spec) + " --json-schema"
    return policy_label(c.spec) + _AIDS[c.aids]


def write_report(run: StructuredRun, out_dir: str | Path) -> list[Path]:
    """structured.md and structured.json; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarize(run.records)
    md, js = out / "structured.md", out / "structured.json"
    md.write_text(markdown(run, summaries), encoding="utf-8")
    js.write_text(json.dumps(to_dict(run, summaries), indent=1), encoding="utf-8")
    return [md, js]


def to_dict(run: StructuredRun, summaries: Sequence[StructuredSummary]) -> dict[str, Any]:
    return {"meta": run.meta, "contestants": run.contestants, "notes": run.notes,
            "summaries": [s.to_dict() for s in summaries], "gains": gains(summaries),
            "acceptance": acceptance_pairs(summaries),
            "peer_sweep": run.peer_sweep, "records": [r.to_dict() for r in run.records]}


def markdown(run: StructuredRun, summaries: Sequence[StructuredSummary]) -> str:
    lines = [f"# svip-local structured-output benchmark: {run.meta.get('pair', '')}", ""]
    lines += [f"- {k}: {v}" for k, v in run.meta.items() if k != "pair"]
    lines += ["", EXPLAIN, "", *[f"- {n}" for n in run.notes], ""]
    for temp in sorted({s.temperature for s in summaries}):
        rows = [s for s in summaries if s.temperature == temp]
        lines += [f"## All tasks, {temperature_label(temp)}", "", *_main_table(run, rows), ""]
        lines += [f"### × the constrained target alone by task kind, "
                  f"{temperature_label(temp)}", "", *_kind_table(run, rows), ""]
        found = gains(rows)
        if found:
            lines += [f"### What each aid gained, {temperature_label(temp)}", "",
                      "| policy | aid | tok/s with | tok/s without | gain |",
                      "|---|---|---:|---:|---:|"]
            lines += [f"| {policy_label(g['policy'])} | {g['aid']} | {g['with_tps']:.2f} | "
                      f"{g['without_tps']:.2f} | {g['gain']:.3f}× |" for g in found]
            lines.append("")
        pairs = acceptance_pairs(rows)
        if pairs:
            lines += [f"### Acceptance, constrained vs free text, {temperature_label(temp)}",
                      "", "| policy | constrained | its draft and copies | free text |",
                      "|---|---:|---:|---:|"]
            lines += [f"| {policy_label(a['policy'])} | {a['constrained']:.0%} | "
                      f"{_pct(a['constrained_draft'])} | {a['free']:.0%} |" for a in pairs]
            lines.append("")
    if run.peer_sweep:
        lines += ["## llama.cpp's llama-speculative-simple --json-schema: sweep (greedy, "
                  "mean tokens/s)", "", "| n_max | p_min | tokens/s | acceptance |",
                  "|---:|---:|---:|---:|"]
        lines += [f"| {r['n_max']} | {r['p_min']:g} | {r['mean_tps']:.2f} | "
                  f"{r['acceptance']:.0%} |" for r in run.peer_sweep]
        lines.append("")
    bad = [r for r in run.records if r.finished and not r.valid]
    if bad:
        lines += ["## Finished replies that did not validate", "",
                  "| task | contestant | temperature | problem |", "|---|---|---:|---|"]
        lines += [f"| {r.task_id} | {r.contestant} | {r.temperature:g} | "
                  f"{r.problem.replace('|', '/')[:120]} |" for r in bad]
        lines.append("")
    return "\n".join(lines)


def console_table(run: StructuredRun, temperature: float = 0.0) -> str:
    """The overall table as plain text (for a terminal)."""
    rows = [s for s in summarize(run.records) if s.temperature == temperature]
    head = (f"{'contestant':<40} {'tok/s':>6} {'×con':>5} {'×free':>5} {'stop':>5} "
            f"{'valid':>5} {'forced':>6} {'accept':>6} {'mask':>5} {'pred.':>6}")
    lines = [f"structured output, {temperature_label(temperature)} (tokens/s, prefill "
             "included; ×con: over the constrained target alone)", head, "-" * len(head)]
    for name in run.contestants:
        s = find(rows, name, OVERALL, temperature)
        if s is None:
            continue
        lines.append(f"{contestant_label(name)[:40]:<40} {s.mean_tps:6.2f} "
                     f"{_x(s.speedup):>5} {_x(s.speedup_free):>5} {s.stop_rate:5.0%} "
                     f"{_pct(s.valid_rate):>5} {s.forced_share:6.0%} {s.acceptance:6.0%} "
                     f"{s.mask_ms_per_token:5.2f} "
                     f"{'–' if s.predicted_tps is None else f'{s.predicted_tps:.2f}':>6}")
    return "\n".join(lines)


def _main_table(run: StructuredRun, rows: Sequence[StructuredSummary]) -> list[str]:
    out = ["| contestant | tok/s | × constrained | predicted × constrained | × free | "
           "decode × free | stop | valid | forced | accept (draft) | mask ms/tok | "
           "predicted tok/s (error) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in run.contestants:
        s = find(rows, name, OVERALL, rows[0].temperature if rows else 0.0)
        if s is None:
            continue
        pred = "–" if s.predicted_tps is None else (
            f"{s.predicted_tps:.2f} ({s.prediction_error:+.1%})"
            if s.prediction_error is not None else f"{s.predicted_tps:.2f}")
        draft = "" if s.draft_acceptance is None else f" ({s.draft_acceptance:.0%})"
        out.append(f"| {contestant_label(name)} | {s.mean_tps:.2f} | {_x(s.speedup)} | "
                   f"{_x(s.predicted_speedup)} | {_x(s.speedup_free)} | "
                   f"{_x(s.decode_ratio_free)} | {s.stop_rate:.0%} | {_pct(s.valid_rate)} | "
                   f"{s.forced_share:.0%} | {s.acceptance:.0%}{draft} | "
                   f"{s.mask_ms_per_token:.3f} | {pred} |")
    return out


def _kind_table(run: StructuredRun, rows: Sequence[StructuredSummary]) -> list[str]:
    kinds = [k for k in KINDS if any(s.group == k for s in rows)]
    out = ["| contestant | " + " | ".join(kinds) + " | all |",
           "|---|" + "---:|" * (len(kinds) + 1)]
    temp = rows[0].temperature if rows else 0.0
    for name in run.contestants:
        cells = [find(rows, name, g, temp) for g in (*kinds, OVERALL)]
        if all(c is None for c in cells):
            continue
        out.append(f"| {contestant_label(name)} | " + " | ".join(
            "skipped" if c is None else _x(c.speedup) for c in cells) + " |")
    return out


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"
