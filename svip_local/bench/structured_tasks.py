"""The structured-output benchmark's task set: requests whose reply a program parses.

Four kinds, one JSONL row each (`workloads/structured.jsonl`, written for this project):

- `extract`: a given text -> an object of a JSON Schema, its values copied from the text;
- `record`: records generated from a description (enums, arrays, nested objects);
- `tool`: a request and 3-5 tools in OpenAI's format, `tool_choice` "required" or "auto";
- `regex`: one value in a format (a date, a version, an id) that a regular expression fixes.

    {"id": "...", "kind": "extract", "messages": [...], "schema": {...}}
    {"id": "...", "kind": "regex", "messages": [...], "regex": "[0-9]{4}-[0-9]{2}-[0-9]{2}"}
    {"id": "...", "kind": "tool", "messages": [...], "tools": [...], "tool_choice": "auto"}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from svip_local.errors import InvalidRequestError

KINDS = ("extract", "record", "tool", "regex")
PACKAGED = "structured.jsonl"
_TARGET = {"extract": "schema", "record": "schema", "regex": "regex", "tool": "tools"}
_KEYS = {"id", "kind", "messages", "schema", "regex", "tools", "tool_choice"}


@dataclass(frozen=True)
class StructuredTask:
    """One request: `messages` end with the user's; exactly one of `schema`, `regex` and
    `tools` says what the reply must be."""

    id: str
    kind: str
    messages: tuple[dict[str, Any], ...]
    schema: dict[str, Any] | None = None
    regex: str | None = None
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] = "auto"

    @property
    def response_format(self) -> dict[str, Any] | None:
        """The OpenAI `response_format` of a schema task (None for the others)."""
        if self.schema is None:
            return None
        return {"type": "json_schema",
                "json_schema": {"name": self.id.replace("-", "_"), "schema": self.schema,
                                "strict": True}}

    def tool_schema(self, name: str) -> dict[str, Any]:
        """The parameters schema of the tool `name` (KeyError if there is none)."""
        for t in self.tools:
            if t["function"]["name"] == name:
                return dict(t["function"].get("parameters") or {"type": "object"})
        raise KeyError(name)

    def peer_schema(self) -> dict[str, Any] | None:
        """The JSON Schema a peer that takes only JSON Schema is held to: the task's own; for
        a tool task, one call object `{"name", "arguments"}` of any of its tools (the tool is
        not given away); None for a regex task (those peers skip it)."""
        if self.schema is not None:
            return self.schema
        if not self.tools:
            return None
        calls = [{"type": "object", "additionalProperties": False,
                  "required": ["name", "arguments"],
                  "properties": {"name": {"const": t["function"]["name"]},
                                 "arguments": self.tool_schema(t["function"]["name"])}}
                 for t in self.tools]
        return calls[0] if len(calls) == 1 else {"anyOf": calls}


def load_tasks(source: str | Path | None = None) -> list[StructuredTask]:
    """The packaged task set (None) or a JSONL file of the same rows."""
    if source is None:
        text = resources.files("svip_local.bench.workloads").joinpath(PACKAGED).read_text(
            encoding="utf-8")
        origin = f"svip_local/bench/workloads/{PACKAGED}"
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidRequestError(f"task file not found: {path}")
        text, origin = path.read_text(encoding="utf-8"), str(path)
    return parse_tasks(text.splitlines(), origin=origin)


def parse_tasks(lines: Iterable[str], *, origin: str) -> list[StructuredTask]:
    """Tasks from JSONL lines; a bad row raises InvalidRequestError naming `origin:line`."""
    tasks: list[StructuredTask] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        task = _parse_row(line, f"{origin}:{n}")
        if task.id in seen:
            raise InvalidRequestError(f"{origin}:{n}: duplicate id {task.id!r}")
        seen.add(task.id)
        tasks.append(task)
    if not tasks:
        raise InvalidRequestError(f"{origin}: no tasks")
    return tasks


def select_tasks(tasks: Sequence[StructuredTask], *, kinds: Sequence[str] = (),
                 per_kind: int | None = None) -> list[StructuredTask]:
    """The tasks of `kinds` (all by default), the first `per_kind` of each, in file order."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise InvalidRequestError(f"unknown task kind(s) {', '.join(unknown)}; known: "
                                  f"{', '.join(KINDS)}")
    taken: dict[str, int] = {}
    out = []
    for task in tasks:
        if kinds and task.kind not in kinds:
            continue
        if per_kind is not None and taken.get(task.kind, 0) >= per_kind:
            continue
        taken[task.kind] = taken.get(task.kind, 0) + 1
        out.append(task)
    if not out:
        raise InvalidRequestError("no task left to run")
    return out


def _parse_row(line: str, where: str) -> StructuredTask:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise InvalidRequestError(f"{where}: expected a JSON object")
    extra = sorted(row.keys() - _KEYS)
    if extra:
        raise InvalidRequestError(f"{where}: unknown field(s) {', '.join(extra)}")
    kind = row.get("kind")
    if kind not in KINDS:
        raise InvalidRequestError(f"{where}: kind must be one of {', '.join(KINDS)}")
    if not isinstance(row.get("id"), str) or not row["id"]:
        raise InvalidRequestError(f"{where}: id must be a non-empty string")
    target = _TARGET[kind]
    given = [k for k in ("schema", "regex", "tools") if k in row]
    if given != [target]:
        raise InvalidRequestError(f"{where}: a {kind} task needs {target} (and no "
                                  f"{' or '.join(k for k in given if k != target) or 'other'})")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in messages):
        raise InvalidRequestError(f"{where}: messages must be a non-empty list of "
                                  "{role, content} objects")
    if messages[-1].get("role") != "user":
        raise InvalidRequestError(f"{where}: the last message must be the user's")
    return StructuredTask(row["id"], kind, tuple(dict(m) for m in messages),
                          schema=_object(row, "schema", where) if "schema" in row else None,
                          regex=_text(row, "regex", where) if "regex" in row else None,
                          tools=_tools(row, where) if "tools" in row else (),
                          tool_choice=row.get("tool_choice", "auto"))


def _object(row: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    if not isinstance(row[key], dict):
        raise InvalidRequestError(f"{where}: {key} must be a JSON object")
    return dict(row[key])


def _text(row: dict[str, Any], key: str, where: str) -> str:
    if not isinstance(row[key], str) or not row[key]:
        raise InvalidRequestError(f"{where}: {key} must be a non-empty string")
    return str(row[key])


def _tools(row: dict[str, Any], where: str) -> tuple[dict[str, Any], ...]:
    tools = row["tools"]
    if not isinstance(tools, list) or not tools or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools):
        raise InvalidRequestError(f"{where}: tools must be a non-empty list of "
                                  "{type: function, function: {name, ...}} objects")
    choice = row.get("tool_choice", "auto")
    if choice not in ("auto", "required") and not isinstance(choice, dict):
        raise InvalidRequestError(f"{where}: tool_choice must be auto, required or a "
                                  "named function")
    return tuple(dict(t) for t in tools)
