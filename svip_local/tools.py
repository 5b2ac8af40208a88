"""OpenAI tool calling on a local model: the tools checked, the model's own call syntax, and the
grammar that constrains a call's arguments to its tool's parameter schema.

The call syntax is the one the model was trained on, read off its chat template: Qwen2.5 /
Hermes (`<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`, the template renders
the tools), Llama 3.x (a bare `{"name": ..., "parameters": ...}` reply), or, for a template
without tools, the Hermes format in plain text with the tools described in the system prompt.
The grammar is lazy: free text until the call's trigger, then the call itself (`tool_choice`
"required" or a named function constrain from the first token; "none" refuses the trigger).
`svip_local.tool_stream` turns the generated text back into `ToolCallDelta` / `ToolCall` events.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from svip_local.constraint import JSON_FORMAT, Constraint, check_schema
from svip_local.errors import ConstraintError, InvalidRequestError

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
TOOL_CHOICES = ("auto", "none", "required")


@dataclass(frozen=True)
class Tool:
    """One function the model may call: OpenAI's `{"type": "function", "function": ...}`."""

    name: str
    parameters: Mapping[str, Any]
    description: str = ""

    def as_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = dict(self.parameters)
        return {"type": "function", "function": function}


def parse_tools(tools: Sequence[Mapping[str, Any]]) -> list[Tool]:
    """OpenAI `tools`, checked: a function each, names valid and distinct, parameters a valid
    JSON Schema the grammar engine supports."""
    if not isinstance(tools, Sequence) or isinstance(tools, str | bytes):
        raise InvalidRequestError("tools must be a list of {\"type\": \"function\", ...} objects")
    out: list[Tool] = []
    for i, entry in enumerate(tools):
        function = entry.get("function") if isinstance(entry, Mapping) else None
        if not isinstance(entry, Mapping) or entry.get("type") != "function" \
                or not isinstance(function, Mapping):
            raise InvalidRequestError(
                f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}, "
                f"got {entry!r:.120}")
        name = function.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise InvalidRequestError(
                f"tools[{i}]: the function name {name!r} is not valid (1-64 letters, digits, "
                "underscores or dashes)")
        if any(t.name == name for t in out):
            raise InvalidRequestError(f"tools[{i}]: the function name {name!r} is used twice")
        parameters = function.get("parameters", EMPTY_PARAMETERS)
        try:
            check_schema(parameters)
        except ConstraintError as exc:
            raise ConstraintError(f"tools[{i}] ({name}) parameters: {exc}") from None
        description = function.get("description", "")
        out.append(Tool(name, dict(parameters), description if isinstance(description, str)
                        else ""))
    return out


def choose_tools(tools: Sequence[Tool], tool_choice: str | Mapping[str, Any]
                 ) -> tuple[str, list[Tool]]:
    """("auto" | "none" | "required", the tools a call may name) for OpenAI's `tool_choice`;
    a named function is "required" with that one tool."""
    if isinstance(tool_choice, str):
        if tool_choice not in TOOL_CHOICES:
            raise InvalidRequestError(
                f"tool_choice must be one of {TOOL_CHOICES} or a named function, "
                f"got {tool_choice!r}")
        if tool_choice != "none" and not tools:
            raise InvalidRequestError(f"tool_choice {tool_choice!r} needs tools")
        return tool_choice, list(tools)
    function = tool_choice.get("function") if isinstance(tool_choice, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(tool_choice, Mapping) or tool_choice.get("type") != "function" \
            or not isinstance(name, str):
        raise InvalidRequestError(
            "a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": ...}}, "
            f"got {tool_choice!r:.120}")
    named = [t for t in tools if t.name == name]
    if not named:
        raise InvalidRequestError(
            f"tool_choice names {name!r}, which is not among the tools "
            f"({', '.join(t.name for t in tools) or 'none given'})")
    return "required", named


@dataclass(frozen=True)
class CallSyntax:
    """How a model writes a call: `trigger`, then `head`, the name, `middle`, the arguments'
    JSON, `end`; parallel calls joined by `separator`. `in_template`: the chat template
    renders the tools (else they go into the system prompt, `tools_prompt`); `until_end`: the
    call runs to the end of the reply (`end` closes the JSON only)."""

    name: str
    trigger: str
    head: str
    middle: str
    end: str
    separator: str = "\n"
    in_template: bool = True
    until_end: bool = False
    fenced: bool = False  # also a ```json block holding {"name": ..., "arguments": ...}

    def call_text(self, name: str, arguments: str) -> str:
        return f"{self.trigger}{self.head}{name}{self.middle}{arguments}{self.end}"


HERMES = CallSyntax("hermes", "<tool_call>", '\n{"name": "', '", "arguments": ',
                    "}\n</tool_call>", fenced=True)
# Qwen2.5-Coder often writes its call as a fenced JSON block instead of <tool_call> when it
# may answer in text ("auto"); llama.cpp's Hermes handler accepts that form too. A block is a
# call only once its "name" is one of the tools (an ordinary JSON block stays content).
WS = r"[ \t\n]*"
FENCE_OPEN = r"```(?:json)?\n" + WS + r"\{" + WS + r'"name"' + WS + ":" + WS + '"'
FENCE_ARGUMENTS = WS + "," + WS + r'"arguments"' + WS + ":" + WS
FENCE_CLOSE = WS + r"\}" + WS + "```"
LLAMA3 = CallSyntax("llama3", '{"name": "', "", '", "parameters": ', "}", until_end=True)
GENERIC = CallSyntax("generic", "<tool_call>", '\n{"name": "', '", "arguments": ',
                     "}\n</tool_call>", in_template=False)


def detect_syntax(template_text: str | None) -> CallSyntax:
    """The call syntax a chat template (its Jinja text; None: a built-in) was written for."""
    if not template_text or "tools" not in template_text:
        return GENERIC
    if "<tool_call>" in template_text:
        return HERMES
    if "<|eot_id|>" in template_text or "<|python_tag|>" in template_text:
        return LLAMA3
    return GENERIC


def tools_prompt(tools: Sequence[Tool]) -> str:
    """The tools and the call format, for a system prompt (templates that take no tools):
    Qwen2.5's own wording, so the format is one the models of this family know."""
    listed = "\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{listed}\n</tools>\n\nFor each function call, return a json object with "
            "function name and arguments within <tool_call></tool_call> XML tags:\n"
            "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
            "</tool_call>")


SpecialToken = Callable[[str], int | None]  # the token id a text is as one special token


def tool_constraint(syntax: CallSyntax, tools: Sequence[Tool], mode: str, parallel: bool,
                    special: SpecialToken) -> Constraint:
    """The lazy grammar of a reply under `mode` ("auto" | "none" | "required"): free text
    and calls for "auto", free text without the trigger for "none", calls only otherwise.
    `special` says which marker texts are one special token of the model (`<tool_call>`
    in Qwen2.5), written as that token, never as text."""

    def lit(text: str) -> str:
        """A literal in Lark, with the markers that are special tokens written as tokens."""
        parts = re.split(r"(</?[A-Za-z_|]+>)", text)
        out = []
        for part in parts:
            if not part:
                continue
            token = special(part) if part.startswith("<") else None
            out.append(f"<[{token}]>" if token is not None else json.dumps(part))
        return " ".join(out)

    trigger_token = special(syntax.trigger)
    rules = ["%llguidance {}", "TAG_TEXT: /(.|\\n)*/"]
    if mode == "none":
        if trigger_token is None:  # a text trigger: text that never contains it
            rules[1] = f"TAG_TEXT: /(.|\\n)*/ & ~/(.|\\n)*{re.escape(syntax.trigger)}(.|\\n)*/"
        rules.insert(1, "start: TAG_TEXT")
        return Constraint.of_grammar("tools", "\n".join(rules), lazy=True)
    names = " | ".join(f"fn_{i}" for i in range(len(tools)))
    rules.append(f"body: {lit(syntax.head)} ({names}) {lit(syntax.end)}")
    for i, tool in enumerate(tools):
        schema = {**tool.parameters, "x-guidance": JSON_FORMAT}
        rules.append(f"fn_{i}: {lit(tool.name + syntax.middle)} %json {json.dumps(schema)}")
    call = f"{lit(syntax.trigger)} body"
    several = parallel and not syntax.until_end
    if mode == "required":
        sep = lit(syntax.separator)
        # A model may end its line after the last call before it ends the reply.
        rules.append(f"start: {call} ({sep} {call})* {sep}?" if several
                     else f"start: {call} {sep}?")
        return Constraint.of_grammar("tools", "\n".join(rules), lazy=True)
    if trigger_token is not None:
        rules.append(f"seg: TAG_TEXT {call}")
    else:  # text up to the trigger, found lazily (the shortest text before it)
        rules.append(f"trig[lazy]: TAG_TEXT {lit(syntax.trigger)}")
        rules.append("seg: trig body")
    if syntax.fenced:
        rules[-1] += "".join(f" | fseg_{i}" for i in range(len(tools)))
        rules.append(f"FWS: /{WS}/")
        for i, tool in enumerate(tools):
            opened = FENCE_OPEN + re.escape(tool.name) + '"'
            rules.append(f"ftrig_{i}[lazy]: TAG_TEXT /{opened}/")
            schema = {**tool.parameters, "x-guidance": {"whitespace_flexible": True}}
            rules.append(f'fseg_{i}: ftrig_{i} FWS "," FWS "\\"arguments\\"" FWS ":" FWS '
                         f'%json {json.dumps(schema)} FWS "}}" FWS "```"')
    rules.append("start: seg* TAG_TEXT" if several else "start: TAG_TEXT | seg")
    return Constraint.of_grammar("tools", "\n".join(rules), lazy=True)


def response_format_constraint(response_format: Mapping[str, Any] | None) -> Constraint | None:
    """OpenAI's `response_format` as a constraint: None for text, any JSON object for
    "json_object", the schema of "json_schema"."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint.json_object()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or "schema" not in spec:
            raise InvalidRequestError(
                "response_format json_schema needs {\"json_schema\": {\"name\": ..., "
                "\"schema\": {...}}}")
        return Constraint.json_schema(spec["schema"])
    raise InvalidRequestError(
        f"response_format type {kind!r} is not supported (text, json_object or json_schema)")
