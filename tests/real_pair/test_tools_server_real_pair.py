"""The real Qwen2.5-Coder pair behind the server calls a tool of its own accord: its template
shows the tools, its Hermes syntax is detected (greedy, this model writes the call as a fenced
JSON block naming the tool rather than `<tool_call>`), and the official client gets the call."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import openai
import pytest

from svip_local import Engine
from svip_local.server import create_app
from tests.support.server import running_server

pytestmark = pytest.mark.real_pair

WEATHER_PARAMETERS = {"type": "object", "required": ["city"],
                      "properties": {"city": {"type": "string", "description": "a city name"}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": WEATHER_PARAMETERS}}


def test_the_pair_calls_get_weather_with_tool_choice_auto(real_pair: tuple[Path, Path]) -> None:
    with Engine(*real_pair, n_ctx=2048, policy="svip") as engine, \
            running_server(create_app(engine, model_name="qwen")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)
        resp = client.chat.completions.create(
            model="qwen", messages=[{"role": "user", "content": "What's the weather in Paris?"}],
            tools=[WEATHER], tool_choice="auto", temperature=0, max_tokens=96)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_PARAMETERS)
    assert "paris" in arguments["city"].lower()
