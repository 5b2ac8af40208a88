"""What must never crash the server or wedge its engine: bad input, oversize bodies, a full
queue, and clients that go away mid-generation."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from svip_local.engine import Engine
from svip_local.errors import DecodeError
from svip_local.events import Done, Event
from svip_local.server import create_app
from tests.support.server import (
    PausableEngine,
    fresh_engine_state,
    is_idle,
    running_server,
    wait_for_health,
)

PROMPT = "The quick brown fox"
MAX_BYTES = 4096
CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
USER = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Iterator[Engine]:
    # One slot: the queue tests count on one running generation (test_server_concurrency.py
    # has the slots).
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, parallel=1,
                policy="svip:0.3") as eng:
        yield eng


@pytest.fixture(scope="module")
def reference(engine: Engine) -> Done:
    return engine.complete(PROMPT, max_tokens=24)


@pytest.fixture(scope="module")
def paused(engine: Engine) -> PausableEngine:
    return PausableEngine(engine)


@pytest.fixture(scope="module")
def base_url(paused: PausableEngine, reference: Done) -> Iterator[str]:
    app = create_app(paused, model_name="tiny", aliases=["gpt-4o-mini"],  # type: ignore[arg-type]
                     max_queue=1, max_request_bytes=MAX_BYTES)
    with running_server(app) as url:
        yield url


@pytest.fixture(autouse=True)
def _fresh_engine_state(paused: PausableEngine, base_url: str) -> Iterator[None]:
    yield from fresh_engine_state(paused, base_url)


def assert_error(resp: httpx.Response, status: int, param: str | None = None,
                 code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param and error["code"] == code
    return error


def assert_consistent(base_url: str, reference: Done) -> None:
    """The engine still produces exactly the library's greedy text: KV caches intact."""
    resp = httpx.post(f"{base_url}{TEXT}", json={"prompt": PROMPT, "max_tokens": 24,
                                                 "temperature": 0}, timeout=30)
    assert resp.json()["choices"][0]["text"] == reference.text


@pytest.mark.parametrize("body", [
    b"{not json", b"", b"[]", b'"text"', b"[" * 3000, b'{"prompt": "x", "temperature": NaN}',
    b'{"prompt": "x"} trailing',
], ids=["syntax", "empty", "array", "string", "deep-nesting", "nan", "trailing"])
def test_invalid_json_is_400(base_url: str, body: bytes) -> None:
    resp = httpx.post(f"{base_url}{TEXT}", content=body,
                      headers={"content-type": "application/json"})
    error = assert_error(resp, 400, param="temperature" if b"NaN" in body else None)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("path", "body", "param"), [
    (CHAT, {"messages": []}, "messages"),
    (CHAT, {"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "url": "x"}]}]},
     "messages[0].content"),
    (CHAT, {"messages": USER, "n": 2}, "n"),
    (CHAT, {"messages": USER, "max_tokens": 0}, "max_tokens"),
    (CHAT, {"messages": USER, "max_tokens": 1.5}, "max_tokens"),
    (CHAT, {"messages": USER, "stream": "yes"}, "stream"),
    (CHAT, {"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    (CHAT, {"messages": USER, "presence_penalty": 0.5}, "presence_penalty"),
    (CHAT, {"messages": USER, "tools": []}, "tools"),
    (TEXT, {"prompt": ["one", "two"]}, "prompt"),
    (TEXT, {"prompt": []}, "prompt"),
    (TEXT, {"prompt": "x", "top_p": 0}, "top_p"),
    (TEXT, {"prompt": "x", "temperature": -1}, "temperature"),
    (TEXT, {"prompt": "x", "seed": -5}, "seed"),
    (TEXT, {"prompt": "x", "seed": -1}, "seed"),  # llama.cpp's "random" is not OpenAI's
    (TEXT, {"prompt": "x", "seed": 2**64}, "seed"),
    (TEXT, {"prompt": "x", "seed": 1.5}, "seed"),
    (TEXT, {"prompt": "x", "top_k": -1}, "top_k"),
    (TEXT, {"prompt": "x", "logprobs": 2}, "logprobs"),
    (TEXT, {"prompt": [10**6]}, None),  # out of the vocabulary: found by the engine
    (TEXT, {"max_tokens": 3}, "prompt"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_parameters_are_400(base_url: str, path: str, body: dict[str, Any],
                                param: str | None) -> None:
    error = assert_error(httpx.post(f"{base_url}{path}", json=body), 400, param=param)
    if param is not None:
        assert param.split("[")[0] in error["message"]


@pytest.mark.parametrize(("path", "body", "status"), [
    (TEXT, {"prompt": "x", "max_tokens": 2, "model": "tiny"}, 200),
    (TEXT, {"prompt": "x", "max_tokens": 2, "model": "gpt-4o-mini"}, 200),  # an alias
    (TEXT, {"prompt": "x", "max_tokens": 2}, 200),  # omitted: the served pair
    (TEXT, {"prompt": "x", "max_tokens": 2, "model": "gpt-4"}, 404),
    (CHAT, {"messages": USER, "max_tokens": 2, "model": "llama-3"}, 404),
    ("/v1/models/gpt-4", None, 404),
    ("/v1/models/gpt-4o-mini", None, 200),
])
def test_only_the_served_model_and_its_aliases_answer(base_url: str, path: str,
                                                      body: dict[str, Any] | None,
                                                      status: int) -> None:
    resp = httpx.post(f"{base_url}{path}", json=body, timeout=30) if body is not None \
        else httpx.get(f"{base_url}{path}")
    if status == 404:
        error = assert_error(resp, 404, param="model", code="model_not_found")
        assert "'tiny'" in error["message"] and "gpt-4o-mini" in error["message"]
    else:
        assert resp.status_code == 200, resp.text


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "svip_local.server.access"]


def test_every_request_is_logged_with_status_tokens_and_time(
        base_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="svip_local.server.access"):
        ok = httpx.post(f"{base_url}{TEXT}", json={"prompt": PROMPT, "max_tokens": 5,
                                                   "temperature": 0}, timeout=30)
        # Greedy: a sampled reply may end before max_tokens (the tiny model's end token).
        streamed = httpx.post(f"{base_url}{TEXT}", json={"prompt": PROMPT, "max_tokens": 4,
                                                         "temperature": 0, "stream": True},
                              timeout=30)
        missing = httpx.get(f"{base_url}/v1/nowhere")
        # A request is logged once its response has gone out: the client may see it first.
        deadline = time.monotonic() + 2
        while len(access_lines(caplog)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert (ok.status_code, streamed.status_code, missing.status_code) == (200, 200, 404)
    lines = access_lines(caplog)
    assert re.fullmatch(r"POST /v1/completions 200 5 tokens \d+\.\d{3}s", lines[0]), lines
    assert re.fullmatch(r"POST /v1/completions 200 4 tokens \d+\.\d{3}s", lines[1]), lines
    assert re.fullmatch(r"GET /v1/nowhere 404 - \d+\.\d{3}s", lines[2]), lines


def test_oversize_requests_are_413(base_url: str, reference: Done) -> None:
    big = {"prompt": "x" * MAX_BYTES}
    assert_error(httpx.post(f"{base_url}{TEXT}", json=big), 413, code="request_too_large")
    # Without a Content-Length (chunked upload) the limit holds while reading.
    chunks = iter([json.dumps(big).encode()[i:i + 1000] for i in range(0, MAX_BYTES + 100, 1000)])
    resp = httpx.post(f"{base_url}{TEXT}", content=chunks)
    assert_error(resp, 413, code="request_too_large")
    assert_consistent(base_url, reference)


def test_unknown_routes_and_methods(base_url: str) -> None:
    assert_error(httpx.get(f"{base_url}/v1/nothing"), 404, code="not_found")
    assert_error(httpx.get(f"{base_url}{CHAT}"), 405, code="method_not_allowed")


def test_full_queue_answers_503(base_url: str, paused: PausableEngine,
                                reference: Done) -> None:
    body = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0}
    paused.gate.clear()
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(httpx.post, f"{base_url}{TEXT}", json=body, timeout=30)
        wait_for_health(base_url, lambda h: h["generating"])
        waiting = pool.submit(httpx.post, f"{base_url}{TEXT}", json=body, timeout=30)
        wait_for_health(base_url, lambda h: h["queued"] == 1)

        full = httpx.post(f"{base_url}{TEXT}", json=body)
        assert_error(full, 503, code="server_busy")
        assert full.headers["retry-after"] == "1"
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as busy:
            client.chat.completions.create(model="tiny", messages=USER)
        assert busy.value.status_code == 503

        paused.gate.set()
        for future in (running, waiting):
            assert future.result().json()["choices"][0]["text"] == reference.text


def test_disconnect_mid_stream_cancels_the_generation(base_url: str, paused: PausableEngine,
                                                      reference: Done) -> None:
    paused.delay = 0.02  # 300 tokens would take more than 6 s
    body = {"prompt": PROMPT, "max_tokens": 300, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{base_url}{TEXT}", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        events = 0
        for line in resp.iter_lines():
            events += line.startswith("data: ")
            if events == 3:
                break
    wait_for_health(base_url, is_idle, timeout=3)
    done = paused.dones[-1]
    assert done.finish_reason == "cancelled"
    assert done.stats.generated < 100
    paused.delay = 0.0
    assert_consistent(base_url, reference)


def test_disconnect_before_the_answer_cancels(base_url: str, paused: PausableEngine,
                                              reference: Done) -> None:
    """A non-streaming client that gives up (here: its read timeout) also frees the engine."""
    paused.delay = 0.02
    body = {"messages": USER, "max_tokens": 300, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}{CHAT}", json=body, timeout=0.5)
    wait_for_health(base_url, is_idle, timeout=3)
    assert paused.dones[-1].finish_reason == "cancelled"
    paused.delay = 0.0
    assert_consistent(base_url, reference)


def test_disconnect_while_queued_skips_the_job(base_url: str, paused: PausableEngine,
                                               reference: Done) -> None:
    body = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0}
    paused.gate.clear()
    generations = len(paused.dones)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(httpx.post, f"{base_url}{TEXT}", json=body, timeout=30)
        wait_for_health(base_url, lambda h: h["generating"])
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base_url}{TEXT}", json=body, timeout=0.3)
        paused.gate.set()
        assert running.result().json()["choices"][0]["text"] == reference.text
    wait_for_health(base_url, is_idle)
    assert len(paused.dones) == generations + 1  # the abandoned job never ran


class FailingEngine(PausableEngine):
    """Fails like a broken llama_decode after `after` events."""

    after = 3

    def generate(self, prompt: Any, **kwargs: Any) -> Iterator[Event]:
        events = super().generate(prompt, **kwargs)
        return self._fail(events)

    def _fail(self, events: Iterator[Event]) -> Iterator[Event]:
        with closing(events):  # frees the real engine for the next request
            for _ in range(self.after):
                yield next(events)
        raise DecodeError("llama_decode failed (-1)")


def test_engine_failures_are_reported_not_fatal(engine: Engine) -> None:
    with running_server(create_app(FailingEngine(engine), model_name="tiny")) as url:  # type: ignore[arg-type]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        stream = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20,
                                           stream=True)
        received = []
        with pytest.raises(openai.APIError, match="llama_decode failed"):
            for chunk in stream:
                received.append(chunk.choices[0].text)
        assert received  # the error came mid-stream, after text
        error = assert_error(httpx.post(f"{url}{TEXT}", json={"prompt": PROMPT}), 500)
        assert error["type"] == "server_error"
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
