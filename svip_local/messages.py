"""A chat conversation as a template takes it: the messages checked (roles; an assistant's
tool calls, their arguments parsed from OpenAI's JSON text; a tool result answering a call an
earlier message made), and a tool conversation written as plain text for a template that takes
no tools."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from svip_local.errors import InvalidRequestError
from svip_local.tools import CallSyntax, Tool, tools_prompt

Messages = Sequence[Mapping[str, Any]]
ROLES = ("system", "user", "assistant", "tool")


def validate_messages(messages: Messages) -> list[dict[str, Any]]:
    """{role, content} dicts, plus an assistant's `tool_calls` (arguments parsed from their
    JSON text: the template writes `arguments | tojson`) and a tool result's `tool_call_id`,
    which must answer a call an earlier assistant message made. The conversation ends with
    the user's message or tool results."""
    if not messages:
        raise InvalidRequestError("the conversation is empty")
    out: list[dict[str, Any]] = []
    call_ids: set[str] = set()
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        calls = m.get("tool_calls") if role == "assistant" else None
        if role not in ROLES or not (isinstance(content, str) or content is None and calls):
            raise InvalidRequestError(
                f"message {i} needs a role in {ROLES} and text content (an assistant message "
                f"with tool_calls may have none), got {dict(m)!r:.200}")
        message: dict[str, Any] = {"role": role, "content": content}
        if calls:
            message["tool_calls"] = _parse_calls(i, calls)
            call_ids.update(c["id"] for c in message["tool_calls"])
        if role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequestError(f"message {i} (a tool result) needs its tool_call_id")
            if call_id not in call_ids:
                raise InvalidRequestError(
                    f"message {i} answers tool_call_id {call_id!r}, which no earlier "
                    "assistant message made")
            message["tool_call_id"] = call_id
        out.append(message)
    if out[-1]["role"] not in ("user", "tool"):
        raise InvalidRequestError("the last message must be the user's (or tool results)")
    return out


def _parse_calls(i: int, calls: object) -> list[dict[str, Any]]:
    """An assistant message's OpenAI `tool_calls`, arguments as objects."""
    if not isinstance(calls, Sequence) or isinstance(calls, str):
        raise InvalidRequestError(f"message {i}: tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(call, Mapping) or not isinstance(call.get("id"), str) \
                or not isinstance(function, Mapping) \
                or not isinstance(function.get("name"), str) \
                or not isinstance(function.get("arguments"), str | Mapping):
            raise InvalidRequestError(
                f"message {i}: tool_calls[{j}] must be {{\"id\", \"type\": \"function\", "
                f"\"function\": {{\"name\", \"arguments\": a JSON string}}}}, got {call!r:.200}")
        arguments = function["arguments"]
        try:
            if isinstance(arguments, str):  # OpenAI's format; an object is taken as it is
                arguments = json.loads(arguments)
        except ValueError as exc:
            raise InvalidRequestError(
                f"message {i}: tool_calls[{j}] arguments are not valid JSON: {exc}") from None
        out.append({"id": call["id"], "type": "function",
                    "function": {"name": function["name"], "arguments": arguments}})
    return out


def plain_tool_messages(messages: Sequence[dict[str, Any]], syntax: CallSyntax,
                        tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """A tool conversation for a template that takes no tools: the tools described in the
    system prompt, calls written into the assistant's text and results as user text."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "tool":
            text = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("from_tool"):
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text, "from_tool": True})
            continue
        content = m["content"] or ""
        for call in m.get("tool_calls", ()):
            f = call["function"]
            written = syntax.call_text(f["name"], json.dumps(f["arguments"], ensure_ascii=False))
            content = f"{content}\n{written}" if content else written
        out.append({"role": m["role"], "content": content})
    if tools:
        prompt = tools_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return [{"role": m["role"], "content": m["content"]} for m in out]
