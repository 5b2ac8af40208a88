"""Bad constraints, tools and tool histories: each a specific error naming the problem, raised
before any work, and the engine answers the next request as if nothing happened."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from svip_local import Constraint, ConstraintError, Engine, InvalidRequestError, stream_chat

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
USER = {"role": "user", "content": "Weather in Oslo?"}
CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function",
     "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Iterator[Engine]:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1) as engine:
        yield engine


def chat(**kwargs: Any) -> Callable[[Engine], object]:
    messages = kwargs.pop("messages", [USER])
    return lambda engine: list(stream_chat(engine, messages, max_tokens=8, **kwargs))


def generate(**kwargs: Any) -> Callable[[Engine], object]:
    return lambda engine: engine.complete("Hello", max_tokens=8, **kwargs)


def constraint(make: Callable[[], Constraint]) -> Callable[[Engine], object]:
    return lambda engine: make()


CASES: list[tuple[str, Callable[[Engine], object], type[Exception], str]] = [
    ("schema is not JSON", constraint(lambda: Constraint.json_schema("{'type': 1")),
     ConstraintError, "not valid JSON"),
    ("schema is not an object", constraint(lambda: Constraint.json_schema("[1, 2]")),
     ConstraintError, "must be an object"),
    ("invalid JSON Schema", constraint(lambda: Constraint.json_schema({"type": 12})),
     ConstraintError, "invalid JSON Schema"),
    ("unsupported schema feature", constraint(lambda: Constraint.json_schema(
        {"type": "object", "dependentSchemas": {"a": {}}})), ConstraintError,
     "dependentSchemas"),
    ("unsatisfiable schema", constraint(lambda: Constraint.json_schema(
        {"type": "integer", "minimum": 5, "maximum": 2})), ConstraintError, "Unsatisfiable"),
    ("Lark syntax error", constraint(lambda: Constraint.lark("start: foo")), ConstraintError,
     "at 1(8)"),
    ("GBNF syntax error", constraint(lambda: Constraint.gbnf('root ::= ( "a"')),
     ConstraintError, "at line 1"),
    ("GBNF unknown rule", constraint(lambda: Constraint.gbnf('root ::= "a" b\n')),
     ConstraintError, "'b' not found"),
    ("regex does not compile", constraint(lambda: Constraint.regex("[a-")), ConstraintError,
     "unclosed character class"),
    ("stop strings with a constraint", generate(constraint=Constraint.json_object(),
                                                stop=["}"]),
     InvalidRequestError, "stop strings cannot be combined"),
    ("ignore_eos with a constraint", generate(constraint=Constraint.json_object(),
                                              ignore_eos=True),
     InvalidRequestError, "ignore_eos"),
    ("tool parameters not a schema", chat(tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "nope"}}}]), ConstraintError, "tools[0] (f)"),
    ("duplicate tool name", chat(tools=[WEATHER, WEATHER]), InvalidRequestError, "used twice"),
    ("tool name not an identifier", chat(tools=[{"type": "function", "function": {
        "name": "get weather!"}}]), InvalidRequestError, "is not valid"),
    ("tool not a function", chat(tools=[{"type": "retrieval"}]), InvalidRequestError,
     "tools[0] must be"),
    ("tool_choice names an unknown tool", chat(tools=[WEATHER], tool_choice={
        "type": "function", "function": {"name": "get_time"}}), InvalidRequestError,
     "not among the tools"),
    ("tool_choice unknown word", chat(tools=[WEATHER], tool_choice="always"),
     InvalidRequestError, "tool_choice must be"),
    ("required without tools", chat(tools=None, tool_choice="required"),
     InvalidRequestError, "needs tools"),
    ("tool message without tool_call_id", chat(tools=[WEATHER], messages=[
        USER, CALL, {"role": "tool", "content": "18C"}]), InvalidRequestError,
     "needs its tool_call_id"),
    ("tool result for an unknown call", chat(tools=[WEATHER], messages=[
        USER, CALL, {"role": "tool", "tool_call_id": "call_9", "content": "18C"}]),
     InvalidRequestError, "no earlier assistant message made"),
    ("malformed tool_calls", chat(tools=[WEATHER], messages=[
        USER, {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}, USER]),
     InvalidRequestError, "tool_calls[0] must be"),
    ("tool_calls arguments not JSON", chat(tools=[WEATHER], messages=[
        USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function",
             "function": {"name": "get_weather", "arguments": "{city"}}]}, USER]),
     InvalidRequestError, "not valid JSON"),
    ("response_format of an unknown type", chat(response_format={"type": "yaml"}),
     InvalidRequestError, "'yaml' is not supported"),
    ("response_format json_schema without a schema", chat(response_format={
        "type": "json_schema", "json_schema": {"name": "x"}}), InvalidRequestError,
     "needs"),
    ("response_format with a forced tool call", chat(
        tools=[WEATHER], tool_choice="required", response_format={"type": "json_object"}),
     InvalidRequestError, "cannot be combined with tool calls"),
    ("response_format and a grammar", chat(response_format={"type": "json_object"},
                                           constraint=Constraint.regex("a+")),
     InvalidRequestError, "not both"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_named_and_harmless(engine: Engine, case: tuple) -> None:
    _, call, error, words = case
    before = engine.complete("Hello", max_tokens=8, policy="constant:2")
    with pytest.raises(error) as caught:
        call(engine)
    assert words in str(caught.value)
    after = engine.complete("Hello", max_tokens=8, policy="constant:2")
    assert after.tokens == before.tokens


def test_a_constraint_the_budget_cannot_finish_ends_with_length(engine: Engine) -> None:
    done = engine.complete("Hello", max_tokens=6, constraint=Constraint.regex("[a-z]{40}"))
    assert done.finish_reason == "length" and len(done.text) >= 6
