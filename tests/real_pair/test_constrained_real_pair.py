"""The real pair under constraints: greedy output equals the constrained target alone for a
JSON Schema, a regex, a GBNF grammar and a tool call, under every kind of policy, and the
structured output validates.

As in test_engine_real_pair, llama.cpp is not bit-identical across batch shapes on quantized
weights: a divergence is allowed only at a near-tie of the target's own logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from svip_local import Constraint, Done, Engine, stream_chat
from svip_local.chat import ChatTemplate, fit_messages
from svip_local.native import Context, Outputs

pytestmark = pytest.mark.real_pair

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"},
    "city": {"type": "string"}, "languages": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "city", "languages"], "additionalProperties": False}
TEXT = ("Maria Gonzalez is 34 and moved to Valencia last spring; she speaks Spanish, "
        "Catalan and English.")
CASES = {
    "json_schema": (f"Extract the person as JSON: {TEXT}", lambda: Constraint.json_schema(SCHEMA)),
    "regex": ("When did Apollo 11 land on the Moon? Answer with the date only.",
              lambda: Constraint.regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")),
    "gbnf": ("Is Python dynamically typed? Answer yes or no, then one reason.",
             lambda: Constraint.gbnf('root ::= ("yes" | "no") ", because " [a-z ,]+ "."\n')),
}
POLICIES = ["constant:3", "svip", "lookup:3:16", "svip+lookup:3:16", "auto"]
NEAR_TIE = 0.5
MAX_TOKENS = 64
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"},
                                     "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"]}}}


@pytest.fixture(scope="module")
def engine(real_pair: tuple[Path, Path]) -> Engine:
    target, draft = real_pair
    with Engine(target, draft, n_ctx=2048) as eng:
        yield eng


def same_or_near_tie(engine: Engine, ids: list[int], a: Done, b: Done) -> None:
    if a.tokens == b.tokens:
        return
    i = next((i for i, (x, y) in enumerate(zip(a.tokens, b.tokens, strict=False)) if x != y),
             min(len(a.tokens), len(b.tokens)))
    assert i < min(len(a.tokens), len(b.tokens)), "one output is a prefix of the other"
    with Context(engine.target_model, n_ctx=2048) as ctx:
        ctx.decode(ids + list(a.tokens[:i]), Outputs.LAST)
        row = ctx.logits()
        gap = abs(float(row[a.tokens[i]] - row[b.tokens[i]]))
    assert gap < NEAR_TIE, (i, gap)


@pytest.mark.parametrize("kind", list(CASES))
def test_constrained_speculation_is_the_constrained_target(engine: Engine, kind: str) -> None:
    question, make = CASES[kind]
    ids = fit_messages(engine, ChatTemplate.for_engine(engine),
                       [{"role": "user", "content": question}], MAX_TOKENS).ids
    constraint = make()
    alone = engine.complete(ids, max_tokens=MAX_TOKENS, policy="none",
                            constraint=constraint.without(forced_tokens=False, draft_mask=False))
    assert alone.finish_reason == "stop"
    if kind == "json_schema":
        jsonschema.validate(json.loads(alone.text), SCHEMA)
    forced = engine.complete(ids, max_tokens=MAX_TOKENS, policy="none", constraint=constraint)
    same_or_near_tie(engine, ids, alone, forced)
    for policy in POLICIES:
        spec = engine.complete(ids, max_tokens=MAX_TOKENS, policy=policy, constraint=constraint)
        same_or_near_tie(engine, ids, alone, spec)


def test_a_tool_call_is_the_targets_own(engine: Engine) -> None:
    ask = [{"role": "user", "content": "What's the weather in Oslo, in celsius?"}]
    runs = {policy: list(stream_chat(engine, ask, tools=[WEATHER], tool_choice="required",
                                     max_tokens=MAX_TOKENS, policy=policy))[-1]
            for policy in ["none", "svip", "auto"]}
    calls = {p: [(c.name, json.loads(c.arguments)) for c in d.tool_calls]
             for p, d in runs.items() if isinstance(d, Done)}
    assert calls["none"] == [("get_weather", {"city": "Oslo", "unit": "celsius"})]
    assert calls["svip"] == calls["none"] and calls["auto"] == calls["none"]
    assert all(isinstance(d, Done) and d.finish_reason == "tool_calls" for d in runs.values())
