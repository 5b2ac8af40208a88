"""Chat workloads for the benchmark: whole conversations, fixed earlier turns included, that the
benchmark renders with the pair's chat template into the one prompt every contestant gets.

`code-edit` is the conversation a coder model serves most: the user pastes a function or a
module and asks for a rename, a fix, docstrings or a port to another style, and the correct
reply repeats most of the pasted code, which is where copying from the prompt pays. Each
workload is a JSONL file shipped in this package, one conversation a line::

    {"id": "...", "category": "rename", "messages": [{"role": "user", "content": "..."}]}

`code-edit-calibration` is a second, disjoint set of the same kind (other code, other ids),
used only to fit and calibrate the copy-acceptance model, so the benchmark's conversations stay
unseen by what is fitted. It is loadable by `load_workload` but is not in `WORKLOADS`, the
workloads `svip-local bench --workload` accepts; it is in `CALIBRATION_WORKLOADS`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from svip_local.bench.prompts import Prompt
from svip_local.errors import InvalidRequestError

if TYPE_CHECKING:
    from svip_local.engine import Engine

ROLES = ("system", "user", "assistant")
_FILES = {"code-edit": "code_edit.jsonl",
          "code-edit-calibration": "code_edit_calibration.jsonl"}
# What the benchmark may run, and what is kept for fitting only; together, all of _FILES.
CALIBRATION_WORKLOADS: tuple[str, ...] = ("code-edit-calibration",)
WORKLOADS: tuple[str, ...] = tuple(n for n in _FILES if n not in CALIBRATION_WORKLOADS)
_ROW_KEYS = {"id", "category", "messages"}
_MESSAGE_KEYS = {"role", "content"}


@dataclass(frozen=True)
class ChatPrompt:
    """One conversation to continue: `messages` end with the user's, the reply is to come."""

    id: str
    category: str
    messages: tuple[dict[str, str], ...]


def load_workload(name: str) -> list[ChatPrompt]:
    """The conversations of a packaged workload, benchmark or calibration one (read through
    importlib.resources, so it works from a wheel as well as from a checkout)."""
    filename = _FILES.get(name)
    if filename is None:
        raise InvalidRequestError(
            f"unknown workload {name!r}; known workloads: {', '.join(_FILES)}")
    source = resources.files(__name__).joinpath(filename)
    text = source.read_text(encoding="utf-8")
    return parse_conversations(text.splitlines(), origin=f"{__name__}/{filename}")


def chat_prompts(engine: Engine, name: str) -> list[Prompt]:
    """A workload's conversations rendered with the engine's chat template: the one prompt
    text every contestant, the peers too, gets."""
    from svip_local.chat import ChatTemplate

    template = ChatTemplate.for_engine(engine)
    return [Prompt(c.id, c.category, template.render(c.messages), c.messages)
            for c in load_workload(name)]


def parse_conversations(lines: Iterable[str], *, origin: str) -> list[ChatPrompt]:
    """Validated conversations from JSONL lines (blank lines skipped); a bad row raises
    InvalidRequestError naming `origin:line` and the problem, since the file is edited by hand.
    """
    prompts: list[ChatPrompt] = []
    first_line: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{origin}:{n}"
        prompt = _parse_row(line, where)
        if prompt.id in first_line:
            raise InvalidRequestError(
                f"{where}: duplicate id {prompt.id!r} (first used on line {first_line[prompt.id]})")
        first_line[prompt.id] = n
        prompts.append(prompt)
    if not prompts:
        raise InvalidRequestError(f"{origin}: no conversations")
    return prompts


def _parse_row(line: str, where: str) -> ChatPrompt:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise InvalidRequestError(f"{where}: expected a JSON object, got {_kind(row)}")
    missing = sorted(_ROW_KEYS - row.keys())
    if missing:
        raise InvalidRequestError(f"{where}: missing field(s) {', '.join(missing)}")
    extra = sorted(row.keys() - _ROW_KEYS)
    if extra:
        raise InvalidRequestError(
            f"{where}: unknown field(s) {', '.join(extra)} (expected id, category, messages)")
    for key in ("id", "category"):
        if not isinstance(row[key], str) or not row[key].strip():
            raise InvalidRequestError(f"{where}: {key} must be a non-empty string")
    raw = row["messages"]
    if not isinstance(raw, list) or not raw:
        raise InvalidRequestError(f"{where}: messages must be a non-empty list")
    messages = tuple(_parse_message(m, f"{where}: message {i}") for i, m in enumerate(raw))
    _check_order(messages, where)
    return ChatPrompt(row["id"], row["category"], messages)


def _parse_message(message: Any, where: str) -> dict[str, str]:
    if not isinstance(message, dict):
        raise InvalidRequestError(f"{where}: expected an object, got {_kind(message)}")
    if message.keys() != _MESSAGE_KEYS:
        raise InvalidRequestError(
            f"{where}: needs exactly the fields role and content, got {sorted(message)}")
    role, content = message["role"], message["content"]
    if role not in ROLES:
        raise InvalidRequestError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    if not isinstance(content, str) or not content.strip():
        raise InvalidRequestError(f"{where}: content must be non-empty text")
    return {"role": role, "content": content}


def _check_order(messages: tuple[dict[str, str], ...], where: str) -> None:
    """An optional system message first, then user and assistant in turn, ending with the
    user's: the shape every chat template accepts, and a reply left to generate."""
    start = 1 if messages[0]["role"] == "system" else 0
    for i, m in enumerate(messages[start:], start):
        want = "user" if (i - start) % 2 == 0 else "assistant"
        if m["role"] != want:
            raise InvalidRequestError(
                f"{where}: message {i} is {m['role']!r} where {want!r} was expected (an "
                "optional system message first, then user and assistant in turn)")
    if messages[-1]["role"] != "user":
        raise InvalidRequestError(
            f"{where}: the last message must be the user's, not {messages[-1]['role']!r}")


def _kind(value: object) -> str:
    names: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return names.get(type(value), repr(value))
