"""Parse the end-of-run report of llama.cpp's speculative examples into our peer fields.

Kept apart from running them so the parser can be tested on captured output; what the lines
mean and how they map onto our timing is in docs/peers.md.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["PeerError", "TREE_NEEDS_KVU", "has_report", "kvu_hint", "parse_output"]

TREE_NEEDS_KVU = (
    "llama-speculative fails once its draft tree branches: the tokens its branches share need "
    "a unified KV cache (-kvu), which this llama.cpp snapshot does not offer to that example; "
    "-np 1 (one chain) never branches, greedy runs seldom do"
)

_NUM = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)"
_RE_ENCODED = re.compile(
    r"encoded\s+(\d+)\s+tokens\s+in\s+" + _NUM + r"\s+seconds?,\s*speed:\s*" + _NUM, re.I
)
_RE_DECODED = re.compile(
    r"decoded\s+(\d+)\s+tokens\s+in\s+" + _NUM + r"\s+seconds?,\s*speed:\s*" + _NUM, re.I
)
_RE_INT_FIELDS = {
    "n_max": re.compile(r"\bn_draft\s*=\s*(-?\d+)"),
    "n_generated_reported": re.compile(r"\bn_predict\s*=\s*(-?\d+)"),
    "drafted": re.compile(r"\bn_drafted\s*=\s*(-?\d+)"),
    "accepted": re.compile(r"\bn_accept\s*=\s*(-?\d+)"),
}
_RE_ACCEPT = re.compile(r"\baccept\s*=\s*" + _NUM + r"\s*%")
_RE_STATS = re.compile(
    r"statistics\s+(\S+):.*?#gen drafts\s*=\s*(\d+),\s*#acc drafts\s*=\s*(\d+),"
    r"\s*#gen tokens\s*=\s*(\d+),\s*#acc tokens\s*=\s*(\d+)"
    r"(?:.*?#mean acc len\s*=\s*" + _NUM + r")?"
    r"(?:.*?dur\(b,g,a\)\s*=\s*" + _NUM + r",\s*" + _NUM + r",\s*" + _NUM + r"\s*ms)?"
)
_RE_PERF = {
    "prompt_eval": re.compile(
        r"prompt eval time\s*=\s*" + _NUM + r"\s*ms\s*/\s*(\d+)\s*tokens"
    ),
    "eval": re.compile(r"\beval time\s*=\s*" + _NUM + r"\s*ms\s*/\s*(\d+)\s*runs"),
}
# a failed target or draft decode: the example carries on (exit status 0) with wrong numbers
_RE_DECODE_FAILED = re.compile(
    r"^.*\b(?:decode: failed|split_equal: sequential split is not)\b.*$", re.M
)
_RE_SECTION = {
    "draft": re.compile(r"\bdraft:[ \t]*$", re.M),
    "target": re.compile(r"\btarget:[ \t]*$", re.M),
}


class PeerError(RuntimeError):
    """The peer binary failed or printed nothing we could parse."""


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return math.nan


def _last_match(rx: re.Pattern[str], text: str) -> re.Match[str] | None:
    matches = list(rx.finditer(text))
    return matches[-1] if matches else None


def has_report(text: str) -> bool:
    """Whether `text` holds the "decoded N tokens" line: a lagging log thread may lose it."""
    return _RE_DECODED.search(text) is not None


def kvu_hint(stderr: str) -> str:
    """The words that name the want of -kvu where the tree example failed for it, else ''."""
    return f" ({TREE_NEEDS_KVU})" if "coupled sequences" in stderr else ""


def parse_output(
    stderr: str, stdout: str = "", prompt: str | None = None, *, tree: bool = False
) -> dict[str, Any]:
    """Parse the end-of-run report of ``llama-speculative-simple`` (``tree``:
    ``llama-speculative``; they print the same lines, but count rounds differently).

    Keys: ``n_generated`` (tokens generated), ``decode_s`` and ``tokens_per_s`` (generation
    loop only, as printed), ``n_prompt``, ``prefill_s``, ``total_s`` (prefill + decode),
    ``tokens_per_s_incl_prefill``, ``drafted``, ``accepted``, ``acceptance`` (fraction),
    ``acceptance_reported_pct``, ``n_max`` (as printed), ``verify_rounds``,
    ``tokens_per_round``, ``text`` (generated text, None if the echo did not match) and, when
    printed, ``target_prompt_eval_ms/_n``, ``target_eval_ms/_n``, ``spec_stats`` (only at
    ``-lv 4``: draft counts, mean acceptance length, ``draft_ms`` = time spent drafting),
    ``draft_prompt_eval_ms/_n``, ``draft_eval_ms/_n`` (tree example).

    Raises :class:`PeerError` if the "decoded ... tokens" line is missing or a decode failed
    (the example then goes on and exits with 0; see :data:`TREE_NEEDS_KVU`). Fields the binary
    did not print come back as None.
    """
    failed = _RE_DECODE_FAILED.search(stderr)
    if failed:
        raise PeerError(f"a decode failed, so the peer's numbers are wrong{kvu_hint(stderr)}: "
                        f"{failed.group(0).strip()}")
    # the report is on stderr; the generated text (stdout) must never be mistaken for it
    text_all = stderr
    dec = _last_match(_RE_DECODED, text_all)
    if dec is None:
        text_all = stderr + "\n" + stdout
        dec = _last_match(_RE_DECODED, text_all)
    if dec is None:
        raise PeerError("no 'decoded N tokens in T seconds' line in the peer's output")
    head, tail = text_all[: dec.start()], text_all[dec.start() :]
    res: dict[str, Any] = {
        "n_generated": int(dec.group(1)),
        "decode_s": _float(dec.group(2)),
        "tokens_per_s": _float(dec.group(3)),
    }
    enc = _last_match(_RE_ENCODED, head)
    res["n_prompt"] = int(enc.group(1)) if enc else None
    res["prefill_s"] = _float(enc.group(2)) if enc else None
    res["prefill_tokens_per_s"] = _float(enc.group(3)) if enc else None

    for key, rx in _RE_INT_FIELDS.items():
        m = rx.search(tail)
        res[key] = int(m.group(1)) if m else None
    m = _RE_ACCEPT.search(tail)
    res["acceptance_reported_pct"] = _float(m.group(1)) if m else None

    drafted, accepted = res["drafted"], res["accepted"]
    res["acceptance"] = accepted / drafted if drafted and accepted is not None else None
    # mean tokens per target verification = 1 + accepted per round. Every round yields its
    # accepted tokens and one more, so rounds = generated - accepted; in the tree example the
    # first of those comes from the prefill's logits, not from a verification batch.
    n_gen = res["n_generated"]
    rounds = max(n_gen - accepted - (1 if tree else 0), 0) if accepted is not None else None
    res["verify_rounds"] = rounds
    res["tokens_per_round"] = 1 + accepted / rounds if rounds and accepted is not None else None

    if res["prefill_s"] is not None and not math.isnan(res["prefill_s"]):
        total = res["prefill_s"] + res["decode_s"]
        res["total_s"] = total
        res["tokens_per_s_incl_prefill"] = n_gen / total if total > 0 else None
    else:
        res["total_s"] = None
        res["tokens_per_s_incl_prefill"] = None

    stats = _RE_STATS.search(tail)
    if stats:
        res["spec_stats"] = {
            "impl": stats.group(1),
            "gen_drafts": int(stats.group(2)),
            "acc_drafts": int(stats.group(3)),
            "gen_tokens": int(stats.group(4)),
            "acc_tokens": int(stats.group(5)),
            "mean_acc_len": _float(stats.group(6)) if stats.group(6) else None,
            "begin_ms": _float(stats.group(7)) if stats.group(7) else None,
            "draft_ms": _float(stats.group(8)) if stats.group(8) else None,
            "accept_ms": _float(stats.group(9)) if stats.group(9) else None,
        }
    # perf lines: the target's after "target:"; the draft's (tree example) between the two
    at_target = _RE_SECTION["target"].search(tail)
    at_draft = _RE_SECTION["draft"].search(tail)
    sections = {"target": tail[at_target.end() :] if at_target else tail}
    if at_draft:
        sections["draft"] = tail[at_draft.end() : at_target.start() if at_target else None]
    for who, text in sections.items():
        for key, rx in _RE_PERF.items():
            m = rx.search(text)
            if m:
                res[f"{who}_{key}_ms"] = _float(m.group(1))
                res[f"{who}_{key}_n"] = int(m.group(2))

    # generated text: stdout is "\n\n" + prompt echo + generation + trailing blank lines
    body = stdout[2:] if stdout.startswith("\n\n") else stdout
    if prompt is not None and body.startswith(prompt):
        res["text"] = body[len(prompt) :].rstrip("\n")
    else:
        res["text"] = None
    return res
