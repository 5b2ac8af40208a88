"""Structured output and tool calls through the server, with the official `openai` client on
tiny real models: `response_format`, `grammar`, `tools` / `tool_choice`, the `tool` role, and
streamed `delta.tool_calls`.

Tiny random models never call a tool of their own accord, so calls are forced (`required` or a
named function); what is checked is the wire format, the round trip and the engine's state.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from svip_local import Constraint
from svip_local.chat import stream_chat
from svip_local.engine import Engine
from svip_local.events import Done
from svip_local.server import create_app
from tests.support.server import (
    PausableEngine,
    fresh_engine_state,
    is_idle,
    running_server,
    wait_for_health,
)

NAME = "tiny-pair"
CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
PROMPT = "The quick brown fox"
USER = [{"role": "user", "content": "Describe a person."}]
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "adult"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "adult": {"type": "boolean"}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "maxLength": 10}}}}}
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}
ASK_WEATHER = [{"role": "user", "content": "What's the weather in Paris?"}]
YES_NO = 'root ::= "yes" | "no"'


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Iterator[Engine]:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=1024, policy="svip:0.3") as eng:
        yield eng


@pytest.fixture(scope="module")
def expected(engine: Engine) -> dict[str, Done]:
    """The library's own greedy results, computed before the server takes the engine."""
    def last(events: Iterator[Any]) -> Done:
        done = list(events)[-1]
        assert isinstance(done, Done)
        return done

    return {
        "person": last(stream_chat(engine, USER, max_tokens=64,
                                   constraint=Constraint.json_schema(PERSON))),
        "text": engine.complete(PROMPT, max_tokens=24),
    }


@pytest.fixture(scope="module")
def paused(engine: Engine) -> PausableEngine:
    return PausableEngine(engine)


@pytest.fixture(scope="module")
def base_url(paused: PausableEngine, expected: dict[str, Done]) -> Iterator[str]:
    with running_server(create_app(paused, model_name=NAME)) as url:  # type: ignore[arg-type]
        yield url


@pytest.fixture(autouse=True)
def _fresh_engine_state(paused: PausableEngine, base_url: str) -> Iterator[None]:
    yield from fresh_engine_state(paused, base_url)


@pytest.fixture()
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def assert_engine_answers(base_url: str, expected: dict[str, Done]) -> None:
    """The engine still produces the library's greedy text: nothing left constrained or wedged."""
    resp = httpx.post(f"{base_url}{TEXT}", json={"prompt": PROMPT, "max_tokens": 24,
                                                 "temperature": 0}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"] == expected["text"].text


# -- response_format and grammar -------------------------------------------------------------


def person_format() -> dict[str, Any]:
    return {"type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


def test_json_schema_response_validates(client: openai.OpenAI, expected: dict[str, Done]) -> None:
    resp = client.chat.completions.create(model=NAME, messages=USER, max_tokens=64,
                                          temperature=0, response_format=person_format())
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content == expected["person"].text
    jsonschema.validate(json.loads(choice.message.content), PERSON)
    svip = resp.model_extra["svip"]
    assert svip["constrained"] and not any(isinstance(v, list) for v in svip.values())
    streamed = client.chat.completions.create(model=NAME, messages=USER, max_tokens=64,
                                              temperature=0, response_format=person_format(),
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == \
        choice.message.content


def test_json_object_response_is_an_object(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=NAME, messages=USER, max_tokens=64,
                                          temperature=0,
                                          response_format={"type": "json_object"})
    assert resp.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(resp.choices[0].message.content or ""), dict)


def test_text_response_format_changes_nothing(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=NAME, messages=USER, max_tokens=12,
                                           temperature=0)
    text = client.chat.completions.create(model=NAME, messages=USER, max_tokens=12,
                                          temperature=0, response_format={"type": "text"})
    assert text.choices[0].message.content == plain.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_gbnf_grammar_on_both_endpoints(client: openai.OpenAI, stream: bool) -> None:
    text = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=8, temperature=0,
                                     stream=stream, extra_body={"grammar": YES_NO})
    chat = client.chat.completions.create(model=NAME, messages=USER, max_tokens=8,
                                          temperature=0, stream=stream,
                                          extra_body={"grammar": YES_NO})
    if stream:
        text_chunks, chat_chunks = list(text), list(chat)
        outputs = ["".join(c.choices[0].text for c in text_chunks),
                   "".join(c.choices[0].delta.content or "" for c in chat_chunks)]
        reasons = [text_chunks[-1].choices[0].finish_reason,
                   chat_chunks[-1].choices[0].finish_reason]
    else:
        outputs = [text.choices[0].text, chat.choices[0].message.content]
        reasons = [text.choices[0].finish_reason, chat.choices[0].finish_reason]
    assert all(out in ("yes", "no") for out in outputs), outputs
    assert reasons == ["stop", "stop"]


# -- tool calls ------------------------------------------------------------------------------


@pytest.mark.parametrize("tool_choice", ["required", FORCE_WEATHER], ids=["required", "named"])
def test_tool_call_round_trip(client: openai.OpenAI, tool_choice: Any) -> None:
    """call -> the tool's result -> a final answer, the call message sent back as received."""
    resp = client.chat.completions.create(model=NAME, messages=ASK_WEATHER, max_tokens=160,
                                          temperature=0, tools=[WEATHER],
                                          tool_choice=tool_choice)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    message = choice.message
    assert message.content is None and message.tool_calls and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.id and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments),
                        WEATHER["function"]["parameters"])

    turn2 = [*ASK_WEATHER, message,
             {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
    final = client.chat.completions.create(model=NAME, messages=turn2, max_tokens=16,
                                           temperature=0, tools=[WEATHER], tool_choice="none")
    answer = final.choices[0]
    assert answer.finish_reason in ("stop", "length") and not answer.message.tool_calls
    assert isinstance(answer.message.content, str) and answer.message.content


def test_streamed_tool_call_deltas_reassemble_to_the_call(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": NAME, "messages": ASK_WEATHER, "max_tokens": 160,
                              "temperature": 0, "tools": [WEATHER],
                              "tool_choice": "required"}
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls
    assert whole is not None
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    calls = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    first, rest = calls[0], calls[1:]
    # OpenAI's shape: the first chunk names the call, the others add argument fragments.
    assert first.index == 0 and first.id and first.type == "function"
    assert first.function is not None and first.function.name == "get_weather"
    assert first.function.arguments == ""
    assert rest and all(d.id is None and d.type is None and d.function is not None
                        and d.function.name is None for d in rest)
    assert {d.index for d in calls} == {0}
    arguments = "".join(d.function.arguments or "" for d in rest if d.function is not None)
    assert (first.function.name, arguments) == (whole[0].function.name,
                                                whole[0].function.arguments)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert finish == ["tool_calls"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""


def test_a_conversation_may_end_with_tool_messages(client: openai.OpenAI) -> None:
    """Two calls answered in one go, history written by hand as a client would."""
    calls = [{"id": f"call_{i}", "type": "function",
              "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
             for i, city in enumerate(["Paris", "Oslo"])]
    messages = [*ASK_WEATHER, {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "call_0", "content": "Sunny"},
                {"role": "tool", "tool_call_id": "call_1", "content": [
                    {"type": "text", "text": "Rain"}]}]
    resp = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8,
                                          temperature=0, tools=[WEATHER],
                                          tool_choice="none")
    assert resp.choices[0].finish_reason in ("stop", "length")


def test_disconnect_mid_tool_call_cancels_it(base_url: str, paused: PausableEngine,
                                             expected: dict[str, Done]) -> None:
    long_city = {**WEATHER, "function": {**WEATHER["function"], "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    paused.delay = 0.02  # 300 tokens would take more than 6 s
    body = {"messages": ASK_WEATHER, "max_tokens": 300, "temperature": 0, "stream": True,
            "tools": [long_city], "tool_choice": FORCE_WEATHER}
    with httpx.stream("POST", f"{base_url}{CHAT}", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: ") and '"tool_calls"' in line:
                break  # inside the call
    wait_for_health(base_url, is_idle, timeout=5)
    done = paused.dones[-1]
    assert done.finish_reason == "cancelled" and done.stats.generated < 200
    paused.delay = 0.0
    assert_engine_answers(base_url, expected)
    again = httpx.post(f"{base_url}{CHAT}", json={**body, "stream": False, "max_tokens": 160,
                                                   "tools": [WEATHER]}, timeout=60)
    assert again.json()["choices"][0]["finish_reason"] == "tool_calls", again.text


# -- bad input: each a 400 that names the problem, the engine answering after ----------------


def _tool(name: str, parameters: Any = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def _schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema",
                                "json_schema": {"name": "x", "schema": schema}}}


def _called(arguments: Any = '{"city": "Paris"}', **call: Any) -> list[dict[str, Any]]:
    """A conversation where the assistant made call `c1` with `arguments`, answered."""
    made = {"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": arguments}, **call}
    return [*ASK_WEATHER, {"role": "assistant", "content": None, "tool_calls": [made]},
            {"role": "tool", "tool_call_id": "c1", "content": "Sunny"}]


BAD = [  # (id, path, body without defaults, words the message must hold, param or None)
    ("unknown-format", CHAT, {"response_format": {"type": "xml"}}, ["'xml'"],
     "response_format.type"),
    ("json-schema-missing", CHAT, {"response_format": {"type": "json_schema"}},
     ["json_schema"], "response_format"),
    ("schema-without-name", CHAT, {"response_format": {"type": "json_schema", "json_schema": {
        "schema": PERSON}}}, ["name"], "response_format.json_schema.name"),
    ("invalid-schema", CHAT, _schema_format({"type": "objekt"}), ["JSON Schema", "objekt"],
     "response_format"),
    ("unsupported-schema-feature", CHAT, _schema_format({"not": {"required": ["a"]}}),
     ["JSON Schema", "not"], "response_format"),
    ("unsatisfiable-schema", CHAT,
     _schema_format({"allOf": [{"type": "string"}, {"type": "integer"}]}),
     ["JSON Schema", "nsatisfiable"], "response_format"),
    ("format-and-grammar", CHAT, {"response_format": {"type": "json_object"},
                                  "grammar": YES_NO}, ["response_format", "grammar"], None),
    ("gbnf-syntax", TEXT, {"grammar": 'root ::= ("yes"'}, ["GBNF"], "grammar"),
    ("gbnf-syntax-chat", CHAT, {"grammar": "root ::= (("}, ["GBNF"], "grammar"),
    ("tools-empty", CHAT, {"tools": []}, ["tools"], "tools"),
    ("tool-bad-parameters", CHAT, {"tools": [_tool("get_weather", {"type": "objekt"})]},
     ["get_weather", "objekt"], None),
    ("tool-parameters-not-object", CHAT, {"tools": [_tool("get_weather", ["city"])]},
     ["parameters"], "tools[0].function.parameters"),
    ("tool-duplicate-name", CHAT, {"tools": [WEATHER, WEATHER]}, ["'get_weather'", "twice"],
     None),
    ("tool-name-not-identifier", CHAT, {"tools": [_tool("get weather")]}, ["'get weather'"],
     None),
    ("tool-choice-unknown", CHAT, {"tools": [WEATHER], "tool_choice": {
        "type": "function", "function": {"name": "get_time"}}}, ["'get_time'", "tools"],
     None),
    ("tool-choice-bad-string", CHAT, {"tools": [WEATHER], "tool_choice": "always"},
     ["tool_choice"], "tool_choice"),
    ("tool-without-call-id", CHAT, {"messages": [
        *ASK_WEATHER, {"role": "tool", "content": "Sunny"}]}, ["tool_call_id"], "messages[1]"),
    ("tool-call-id-never-made", CHAT, {"tools": [WEATHER], "messages": [
        *ASK_WEATHER, {"role": "tool", "tool_call_id": "nobody", "content": "Sunny"}]},
     ["'nobody'"], None),
    ("tool-calls-without-function", CHAT, {"messages": [
        *ASK_WEATHER, {"role": "assistant", "content": None,
                       "tool_calls": [{"id": "c1", "type": "function"}]}]},
     ["function"], "messages[1].tool_calls[0].function"),
    ("tool-calls-arguments-object", CHAT, {"messages": _called({"city": "Paris"})},
     ["arguments"], "messages[1].tool_calls[0].function.arguments"),
    ("tool-calls-arguments-not-json", CHAT, {"tools": [WEATHER],
                                             "messages": _called('{"city": ')},
     ["arguments", "JSON"], None),
    ("tool-calls-wrong-type", CHAT, {"messages": _called(type="retrieval")},
     ["type"], "messages[1].tool_calls[0].type"),
    ("user-with-tool-calls", CHAT, {"messages": [{"role": "user", "content": "hi", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     ["tool_calls"], "messages[0]"),
    ("null-content-without-calls", CHAT, {"messages": [
        *ASK_WEATHER, {"role": "assistant", "content": None}, *ASK_WEATHER]},
     ["content"], "messages[1]"),
    ("stop-with-constraint", CHAT, {"stop": ["}"], "response_format": {"type": "json_object"}},
     ["stop", "json_object"], None),
    ("forced-call-with-format", CHAT, {"tools": [WEATHER], "tool_choice": "required",
                                       "response_format": {"type": "json_object"}},
     ["response_format", "tool_choice"], None),
]


@pytest.mark.parametrize(("path", "body", "words", "param"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_structured_input_is_400(base_url: str, expected: dict[str, Done], path: str,
                                     body: dict[str, Any], words: list[str],
                                     param: str | None) -> None:
    full = {"max_tokens": 8, "temperature": 0, **body}
    full.setdefault("messages" if path == CHAT else "prompt", USER if path == CHAT else PROMPT)
    resp = httpx.post(f"{base_url}{path}", json=full, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    for word in words:
        assert word in error["message"], error["message"]
    if param is not None:
        assert error["param"] == param
    assert_engine_answers(base_url, expected)
