"""The official `openai` client against `svip-local serve`'s app on 127.0.0.1, tiny real models.

Expected texts come from the engine itself (greedy, so deterministic): what the server returns,
streamed or not, must be exactly what the library produces for the same request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from svip_local.chat import stream_chat
from svip_local.engine import Engine
from svip_local.events import Done
from svip_local.server import create_app
from tests.support.server import running_server

NAME = "tiny-pair"
PROMPT = "The quick brown fox"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Iterator[Engine]:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, policy="svip:0.3") as eng:
        yield eng


@pytest.fixture(scope="module")
def expected(engine: Engine) -> dict[str, Done]:
    """The library's own greedy results, computed before the server takes the engine."""
    chat = [e for e in stream_chat(engine, MESSAGES, max_tokens=24) if isinstance(e, Done)]
    return {"text": engine.complete(PROMPT, max_tokens=32), "chat": chat[0]}


@pytest.fixture(scope="module")
def base_url(engine: Engine, expected: dict[str, Done]) -> Iterator[str]:
    with running_server(create_app(engine, model_name=NAME)) as url:
        yield url


@pytest.fixture()
def client(base_url: str) -> openai.OpenAI:
    # max_retries=0: the client would otherwise retry 5xx answers and hide them.
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_models_and_health(client: openai.OpenAI, base_url: str, engine: Engine) -> None:
    assert [m.id for m in client.models.list()] == [NAME]
    assert client.models.retrieve(NAME).owned_by == "svip-local"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    health = httpx.get(f"{base_url}/health").json()
    assert health == {"status": "ok", "model": NAME, "slots": engine.parallel, "generating": 0,
                      "queued": 0, "max_queue": 8}


def test_chat_matches_the_library(client: openai.OpenAI, expected: dict[str, Done]) -> None:
    want = expected["chat"]
    resp = client.chat.completions.create(model=NAME, messages=MESSAGES,
                                          max_tokens=24, temperature=0)
    choice = resp.choices[0]
    assert resp.object == "chat.completion" and resp.model == NAME
    assert choice.message.role == "assistant"
    assert choice.message.content == want.text
    assert choice.finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == want.stats.prompt_tokens
    assert resp.usage.completion_tokens == want.stats.generated
    assert resp.usage.total_tokens == want.stats.prompt_tokens + want.stats.generated
    svip = resp.model_extra["svip"]
    assert svip["generated"] == want.stats.generated and svip["policy"] == "svip:0.3"
    assert svip["rounds"] >= 1 and 0 <= svip["accepted"] <= svip["drafted"]


def test_chat_stream_equals_non_stream(client: openai.OpenAI, expected: dict[str, Done]) -> None:
    chunks = list(client.chat.completions.create(
        model=NAME, messages=MESSAGES, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected["chat"].text
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].model_extra["svip"]["generated"] > 0
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == expected["chat"].stats.generated
    assert len({c.id for c in chunks}) == 1


def test_completions_stream_and_not(client: openai.OpenAI, expected: dict[str, Done]) -> None:
    want = expected["text"]
    resp = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=32, temperature=0)
    assert resp.object == "text_completion"
    assert resp.choices[0].text == want.text
    assert resp.usage is not None and resp.usage.completion_tokens == want.stats.generated
    streamed = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=32,
                                         temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == want.text


def test_completion_from_token_ids(client: openai.OpenAI, engine: Engine,
                                   expected: dict[str, Done]) -> None:
    ids = engine.tokenize(PROMPT)
    resp = client.completions.create(model=NAME, prompt=ids, max_tokens=32, temperature=0)
    assert resp.choices[0].text == expected["text"].text


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings(client: openai.OpenAI, expected: dict[str, Done], stream: bool) -> None:
    full = expected["text"].text
    stop = next(full[i:i + 2] for i in range(4, len(full)) if full[i:i + 2].isalpha())
    want = full[:full.index(stop)]
    if stream:
        chunks = list(client.completions.create(model=NAME, prompt=PROMPT, max_tokens=32,
                                                temperature=0, stop=[stop], stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    else:
        resp = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=32,
                                         temperature=0, stop=stop)
        text, reasons = resp.choices[0].text, [resp.choices[0].finish_reason]
    assert text == want
    assert reasons == ["stop"]


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    def ask() -> str | None:
        resp = client.chat.completions.create(model=NAME, messages=MESSAGES,
                                              max_tokens=16, temperature=1.0, top_p=0.9, seed=7)
        return resp.choices[0].message.content

    assert ask() == ask()


def test_next_turn_reuses_the_cached_prefix(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=12,
                                           temperature=0)
    reply = first.choices[0].message.content or ""
    turn2 = [*MESSAGES, {"role": "assistant", "content": reply},
             {"role": "user", "content": "And then?"}]
    second = client.chat.completions.create(model=NAME, messages=turn2, max_tokens=4,
                                            temperature=0)
    svip1 = first.model_extra["svip"]
    svip2 = second.model_extra["svip"]
    # Only the new turn is decoded: at least the whole first prompt comes from the KV cache.
    assert svip2["prompt_tokens"] - svip2["prefill_tokens"] >= svip1["prompt_tokens"]


def test_errors_have_openai_shapes(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=NAME, messages=MESSAGES, temperature=3)
    assert bad.value.param == "temperature" and bad.value.type == "invalid_request_error"

    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(model=NAME, messages=MESSAGES,
                                       extra_body={"mirostat": 2})
    assert "mirostat" in unknown.value.message and unknown.value.param == "mirostat"

    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=NAME, prompt="word " * 2000, max_tokens=4)
    assert too_long.value.code == "context_length_exceeded"
    assert too_long.value.param == "prompt"

    with pytest.raises(openai.BadRequestError) as bad_turn:
        client.chat.completions.create(model=NAME, max_tokens=4,
                                       messages=[{"role": "assistant", "content": "hi"}])
    assert "user" in bad_turn.value.message


def test_api_key(engine: Engine) -> None:
    app = create_app(engine, model_name=NAME, api_key="s3cret")
    with running_server(app) as url:
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as denied:
            wrong.models.list()
        assert denied.value.code == "invalid_api_key"
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "x"}).status_code == 401
        right = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert right.completions.create(model=NAME, prompt=PROMPT, max_tokens=2).choices
        assert httpx.get(f"{url}/health").status_code == 200  # supervisors need no key


def test_developer_role_and_content_parts(client: openai.OpenAI,
                                          expected: dict[str, Done]) -> None:
    """OpenAI's newer spellings render exactly like the plain system message."""
    messages = [{"role": "developer", "content": [{"type": "text", "text": "Be "},
                                                  {"type": "text", "text": "brief."}]},
                MESSAGES[1]]
    resp = client.chat.completions.create(model=NAME, messages=messages, max_tokens=24,
                                          temperature=0)
    assert resp.choices[0].message.content == expected["chat"].text
