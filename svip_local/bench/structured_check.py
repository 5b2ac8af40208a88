"""Whether a reply to a structured task is what the program on the other end can use: JSON
that parses and validates with `jsonschema` against the task's schema; a regex task's value
matched whole (`re.fullmatch`); a tool task's calls each naming one of its tools, with
arguments that parse and validate against that tool's parameters."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import jsonschema

from svip_local.bench.structured_tasks import StructuredTask

OK = ""  # no problem found

# A template's wrapper around a call that a peer or an unconstrained run writes out as text
# (Qwen2.5 / Hermes `<tool_call>…</tool_call>`).
_WRAPPER = re.compile(r"^\s*<tool_call>\s*(.*?)\s*(?:</tool_call>)?\s*$", re.S)


def problem(task: StructuredTask, text: str,
            calls: Sequence[tuple[str, str]] | None = None) -> str:
    """What is wrong with a reply ('' when it is valid). `calls` are a tool reply's calls as
    (name, arguments JSON text), as the engine parsed them; None for a reply that is text only
    (a peer's, an unconstrained run's), whose tool call is then read from the text."""
    if task.regex is not None:
        return OK if re.fullmatch(task.regex, text) else f"does not match {task.regex!r}"
    if task.schema is not None:
        return _json_problem(text, task.schema)
    if calls is None:
        read = _calls_in_text(text)
        if isinstance(read, str):
            return read
        calls = read
    if not calls:
        return "no tool call"
    for name, arguments in calls:
        try:
            schema = task.tool_schema(name)
        except KeyError:
            return f"calls {name!r}, not one of the tools"
        found = _json_problem(arguments, schema)
        if found:
            return f"{name}: {found}"
    return OK


def is_valid(task: StructuredTask, text: str,
             calls: Sequence[tuple[str, str]] | None = None) -> bool:
    return not problem(task, text, calls)


def _json_problem(text: str, schema: dict[str, Any]) -> str:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc.msg} at {exc.pos})"
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return f"schema: {exc.message}"
    return OK


def _calls_in_text(text: str) -> list[tuple[str, str]] | str:
    """One call `{"name", "arguments"}` written as text (maybe in its template's wrapper)."""
    wrapped = _WRAPPER.match(text)
    body = wrapped.group(1) if wrapped else text
    try:
        call = json.loads(body)
    except json.JSONDecodeError as exc:
        return f"not a JSON call ({exc.msg} at {exc.pos})"
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) \
            or "arguments" not in call:
        return "not a call object {name, arguments}"
    return [(call["name"], json.dumps(call["arguments"]))]
