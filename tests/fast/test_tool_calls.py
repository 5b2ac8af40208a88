"""Tool calls through `stream_chat`: the lazy grammar, the events, the history round trip.

The tiny models' template takes no tools, so they get the generic syntax (Qwen2.5's Hermes
format in plain text, the tools in the system prompt); the real pair's Hermes syntax with its
special `<tool_call>` token is tested in tests/real_pair. `ToolCallStream` is also fed text
split at every boundary, for each syntax.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from svip_local import Done, Engine, Token, ToolCall, ToolCallDelta, stream_chat
from svip_local.events import GenerationStats
from svip_local.tool_stream import ToolCallStream
from svip_local.tools import GENERIC, HERMES, LLAMA3, CallSyntax, detect_syntax

PARAMETERS = {"type": "object", "properties": {
    "city": {"enum": ["Paris", "Rome", "Oslo"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 9}},
    "required": ["city", "days"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                      "parameters": PARAMETERS}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
        "required": ["zone"], "additionalProperties": False}}},
]
ASK = [{"role": "user", "content": "What is the weather in Paris for three days?"}]


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Iterator[Engine]:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=1024, n_threads=1) as engine:
        yield engine


def run(engine: Engine, messages: list[dict], **kwargs: object) -> list[object]:
    return list(stream_chat(engine, messages, max_tokens=160, tools=TOOLS, **kwargs))


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "get_weather"}}])
def test_a_required_call_streams_deltas_then_the_call(engine: Engine, choice: object) -> None:
    events = run(engine, ASK, tool_choice=choice, parallel_tool_calls=False)
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "tool_calls"
    (call,) = done.tool_calls
    assert [e for e in events if isinstance(e, ToolCall)] == [call]
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas[0].id == call.id and deltas[0].name == call.name
    assert all(d.id is None and d.name is None for d in deltas[1:])
    assert "".join(d.arguments for d in deltas) == call.arguments
    tool = next(t["function"] for t in TOOLS if t["function"]["name"] == call.name)
    jsonschema.validate(json.loads(call.arguments), tool["parameters"])
    if isinstance(choice, dict):
        assert call.name == "get_weather"
    shown = "".join(e.text for e in events if isinstance(e, Token))
    assert "<tool_call>" not in shown and call.arguments not in shown


@pytest.mark.parametrize("policy", ["constant:3", "lookup:1:8", "auto"])
def test_tool_calls_are_the_targets_own(engine: Engine, policy: str) -> None:
    alone = run(engine, ASK, tool_choice="required", policy="none")[-1]
    spec = run(engine, ASK, tool_choice="required", policy=policy)[-1]
    assert isinstance(alone, Done) and isinstance(spec, Done)
    assert alone.tool_calls and [(c.name, c.arguments) for c in spec.tool_calls] == \
        [(c.name, c.arguments) for c in alone.tool_calls]
    assert spec.stats.forced_accepted > 0  # `<tool_call>\n{"name": "` is forced


def test_round_trip_call_result_answer(engine: Engine) -> None:
    first = run(engine, ASK, tool_choice="required", parallel_tool_calls=False)[-1]
    assert isinstance(first, Done)
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": c.id, "type": "function", "function": {"name": c.name,
                                                      "arguments": c.arguments}}
        for c in first.tool_calls]}]
    history += [{"role": "tool", "tool_call_id": c.id, "content": '{"temp": 18}'}
                for c in first.tool_calls]
    answer = run(engine, history, tool_choice="none")[-1]
    assert isinstance(answer, Done) and answer.finish_reason != "tool_calls"
    assert not answer.tool_calls and answer.stats.generated > 0
    # The history's call is rendered as the model wrote it: its tokens come from the cache.
    assert answer.stats.prefill_tokens < answer.stats.prompt_tokens


def test_tool_choice_none_never_calls(engine: Engine) -> None:
    events = run(engine, ASK, tool_choice="none")
    assert not [e for e in events if isinstance(e, ToolCallDelta | ToolCall)]
    done = events[-1]
    assert isinstance(done, Done) and "<tool_call>" not in done.text


def test_template_syntaxes_are_detected() -> None:
    assert detect_syntax(None) is GENERIC
    assert detect_syntax("{% for m in messages %}{{ m.content }}{% endfor %}") is GENERIC
    assert detect_syntax("{% if tools %}<tool_call>{% endif %}") is HERMES
    assert detect_syntax("{% if tools %}<|python_tag|>{% endif %}<|eot_id|>") is LLAMA3


def stream(syntax: CallSyntax, text: str, cut: int, finish: str = "eos") -> list[object]:
    """`text` fed as tokens of `cut` characters through `syntax`'s stream."""
    pieces = [text[i:i + cut] for i in range(0, len(text), cut)]
    events: list[object] = [Token(i, p, False, 0) for i, p in enumerate(pieces)]
    events.append(Done(text, (), finish, GenerationStats()))
    return list(ToolCallStream(syntax).events(events))  # type: ignore[arg-type]


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 100])
@pytest.mark.parametrize("syntax", [HERMES, GENERIC])
def test_hermes_calls_are_parsed_at_any_token_boundary(syntax: CallSyntax, cut: int) -> None:
    a = syntax.call_text("get_time", '{"zone": "UTC"}')
    b = syntax.call_text("get_weather", '{"city": "Oslo", "days": 2}')
    events = stream(syntax, f"Checking.\n{a}\n{b}\n", cut)
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "tool_calls"
    assert done.text == "Checking.\n"
    assert [(c.index, c.name, c.arguments) for c in done.tool_calls] == [
        (0, "get_time", '{"zone": "UTC"}'), (1, "get_weather", '{"city": "Oslo", "days": 2}')]
    assert "".join(e.text for e in events if isinstance(e, Token)) == "Checking.\n"


@pytest.mark.parametrize("cut", [1, 4, 100])
def test_llama3_calls_run_to_the_end_of_the_reply(cut: int) -> None:
    events = stream(LLAMA3, '{"name": "get_time", "parameters": {"zone": "CET"}}', cut)
    done = events[-1]
    assert isinstance(done, Done)
    assert [(c.name, c.arguments) for c in done.tool_calls] == [("get_time", '{"zone": "CET"}')]


def test_text_that_only_looks_like_a_trigger_is_content() -> None:
    events = stream(HERMES, "a <tool tip> and <tool_ca", 3)
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "eos" and not done.tool_calls
    assert done.text == "a <tool tip> and <tool_ca"
    assert "".join(e.text for e in events if isinstance(e, Token)) == "a <tool tip> and "


def test_a_call_cut_by_the_budget_is_not_a_call() -> None:
    events = stream(HERMES, '<tool_call>\n{"name": "get_time", "arguments": {"zo', 4, "length")
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "length" and not done.tool_calls
    assert [e.name for e in events if isinstance(e, ToolCallDelta)][0] == "get_time"
