"""Several requests at once: the server runs as many generations as the engine has slots
(sharing its batches), queues a bounded number more, keeps each request's output exactly what
it would be alone, reports llama-server's `timings`, and shuts down with every open request
answered properly."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from svip_local.engine import Engine
from svip_local.server import create_app
from tests.support.server import (
    PausableEngine,
    fresh_engine_state,
    is_idle,
    running_server,
    wait_for_health,
)

ROOT = Path(__file__).resolve().parents[2]
TEXT = "/v1/completions"
CHAT = "/v1/chat/completions"
# Different prompts and lengths, so that the batched rows differ in every way.
REQUESTS = [("The quick brown fox", 40), ("Once upon a time", 25),
            ("def fibonacci(n):", 60), ("Dear Sir or Madam,", 33)]
TIMINGS = {"cache_n", "prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second",
           "predicted_n", "predicted_ms", "predicted_per_token_ms", "predicted_per_second",
           "draft_n", "draft_n_accepted", "queued_ms"}


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Iterator[Engine]:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, parallel=4,
                policy="svip:0.3") as eng:
        yield eng


@pytest.fixture(scope="module")
def paused(engine: Engine) -> PausableEngine:
    return PausableEngine(engine)


@pytest.fixture(scope="module")
def base_url(paused: PausableEngine) -> Iterator[str]:
    app = create_app(paused, model_name="tiny", max_queue=2)  # type: ignore[arg-type]
    with running_server(app) as url:
        yield url


@pytest.fixture(autouse=True)
def _fresh_engine_state(request: pytest.FixtureRequest) -> Iterator[None]:
    if "base_url" not in request.fixturenames:  # the subprocess tests have their own server
        yield
        return
    yield from fresh_engine_state(request.getfixturevalue("paused"),
                                  request.getfixturevalue("base_url"))


def body(prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}


def stream(url: str, payload: dict[str, Any], *, stop_after: int | None = None
           ) -> tuple[list[dict[str, Any]], list[str]]:
    """A streamed request's JSON chunks and its raw `data:` lines (`[DONE]` included);
    `stop_after`: disconnect after that many lines."""
    lines: list[str] = []
    with httpx.stream("POST", url, json={**payload, "stream": True}, timeout=30) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.startswith("data: "):
                lines.append(line)
                if stop_after is not None and len(lines) >= stop_after:
                    break
    chunks = [json.loads(line[6:]) for line in lines if line != "data: [DONE]"]
    return chunks, lines


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["text"] for c in chunks if c["choices"])


def alone(base_url: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    resp = httpx.post(f"{base_url}{TEXT}", json=body(prompt, max_tokens), timeout=30)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


# -- several at once ---------------------------------------------------------------------------

def test_four_streams_at_once_equal_each_alone(base_url: str, paused: PausableEngine) -> None:
    want = [alone(base_url, p, n)["choices"][0]["text"] for p, n in REQUESTS]
    paused.gate.clear()  # hold them all in their slots until every one has started
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        futures = [pool.submit(stream, f"{base_url}{TEXT}", body(p, n)) for p, n in REQUESTS]
        health = wait_for_health(base_url, lambda h: h["generating"] == 4)
        assert health["slots"] == 4 and health["queued"] == 0
        paused.gate.set()
        results = [f.result() for f in futures]
    for (chunks, lines), text in zip(results, want, strict=True):
        assert streamed_text(chunks) == text
        assert lines[-1] == "data: [DONE]"
    slots = {chunks[-1]["svip"]["slot"] for chunks, _ in results}
    assert slots == {0, 1, 2, 3}  # side by side, one slot each
    assert all(chunks[-1]["svip"]["batch_rows"] > 0 for chunks, _ in results)


def test_one_slot_one_waiting_then_503(tiny_target: Path, tiny_draft_noisy: Path) -> None:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, parallel=1,
                policy="svip:0.3") as one:
        gated = PausableEngine(one)
        gated.gate.clear()
        app = create_app(gated, model_name="tiny", max_queue=1)  # type: ignore[arg-type]
        with running_server(app) as url, ThreadPoolExecutor(2) as pool:
            running = pool.submit(httpx.post, f"{url}{TEXT}", json=body("Hi", 8), timeout=30)
            wait_for_health(url, lambda h: h["generating"] == 1)
            waiting = pool.submit(httpx.post, f"{url}{TEXT}", json=body("Ho", 8), timeout=30)
            health = wait_for_health(url, lambda h: h["queued"] == 1)
            assert health["slots"] == 1 and health["generating"] == 1
            full = httpx.post(f"{url}{TEXT}", json=body("Ha", 8), timeout=30)
            assert full.status_code == 503 and full.headers["retry-after"] == "1"
            assert full.json()["error"]["code"] == "server_busy"
            gated.gate.set()
            assert running.result().status_code == waiting.result().status_code == 200
            wait_for_health(url, is_idle)


def test_a_disconnect_frees_its_slot_and_leaves_the_others_alone(
        base_url: str, paused: PausableEngine) -> None:
    p1, p2 = REQUESTS[0][0], REQUESTS[2][0]
    want = [alone(base_url, p1, 100)["choices"][0]["text"],
            alone(base_url, p2, 100)["choices"][0]["text"]]
    paused.delay = 0.02  # 100 tokens take over 2 s: the others outlive the disconnect
    with ThreadPoolExecutor(2) as pool:
        others = [pool.submit(stream, f"{base_url}{TEXT}", body(p, 100)) for p in (p1, p2)]
        wait_for_health(base_url, lambda h: h["generating"] == 2)
        chunks, _ = stream(f"{base_url}{TEXT}", body(REQUESTS[1][0], 300), stop_after=3)
        assert len(chunks) == 3
        health = wait_for_health(base_url, lambda h: h["generating"] == 2, timeout=2)
        assert others[0].running() or others[1].running(), health  # freed while they ran
        results = [f.result() for f in others]
    assert [streamed_text(c) for c, _ in results] == want
    assert paused.dones[-3].finish_reason == "cancelled"  # the first of the three to end
    wait_for_health(base_url, is_idle)


@pytest.mark.parametrize("bad, param", [
    (body("x", 8, grammar="root ::= ("), "grammar"),  # refused before it queues
    (body("x", 8, temperature=5), "temperature"),
    (body("x", 8, grammar='root ::= "a"', stop=["b"]), None),  # refused by the engine
    ({"prompt": [10**7], "max_tokens": 8}, None),
])
def test_a_bad_request_gets_its_400_while_another_streams(
        base_url: str, paused: PausableEngine, bad: dict[str, Any], param: str | None) -> None:
    prompt, n = REQUESTS[0]
    want = alone(base_url, prompt, n)["choices"][0]["text"]
    paused.delay = 0.01
    with ThreadPoolExecutor(1) as pool:
        streaming = pool.submit(stream, f"{base_url}{TEXT}", body(prompt, n))
        wait_for_health(base_url, lambda h: h["generating"] == 1)
        resp = httpx.post(f"{base_url}{TEXT}", json=bad, timeout=30)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == param
        chunks, lines = streaming.result()
    assert streamed_text(chunks) == want and lines[-1] == "data: [DONE]"


# -- timings -----------------------------------------------------------------------------------

def check_timings(timings: dict[str, Any], usage: dict[str, Any],
                  svip: dict[str, Any]) -> None:
    assert set(timings) == TIMINGS
    assert timings["predicted_n"] == usage["completion_tokens"]
    assert timings["cache_n"] + timings["prompt_n"] == usage["prompt_tokens"]
    assert timings["prompt_n"] == svip["prefill_tokens"]
    assert (timings["draft_n"], timings["draft_n_accepted"]) == (svip["drafted"],
                                                                  svip["accepted"])
    assert 0 <= timings["draft_n_accepted"] <= timings["draft_n"]
    assert timings["predicted_ms"] > 0 and timings["prompt_ms"] >= 0
    assert timings["queued_ms"] >= 0
    assert timings["predicted_ms"] == pytest.approx(
        1000 * (svip["wall_s"] - svip["prefill_s"]))
    assert timings["predicted_per_second"] == pytest.approx(
        1000 * timings["predicted_n"] / timings["predicted_ms"])
    if timings["prompt_n"]:
        assert timings["prompt_per_second"] == pytest.approx(
            1000 * timings["prompt_n"] / timings["prompt_ms"])


def test_timings_of_whole_responses(base_url: str) -> None:
    prompt = "A prompt that no other test sends"
    first = alone(base_url, prompt, 12)
    check_timings(first["timings"], first["usage"], first["svip"])
    assert first["timings"]["prompt_n"] > 0
    again = alone(base_url, prompt, 12)  # its slot still holds the prompt
    check_timings(again["timings"], again["usage"], again["svip"])
    assert again["timings"]["cache_n"] > 0
    chat = httpx.post(f"{base_url}{CHAT}", json={"messages": [{"role": "user", "content": "Hi"}],
                                                 "max_tokens": 8, "temperature": 0},
                      timeout=30).json()
    check_timings(chat["timings"], chat["usage"], chat["svip"])


def test_timings_end_a_stream(base_url: str) -> None:
    payload = body(*REQUESTS[1])
    chunks, _ = stream(f"{base_url}{TEXT}", payload)
    finish = chunks[-1]  # without usage, the finish chunk is the last
    assert finish["choices"][0]["finish_reason"] is not None
    usage = {"completion_tokens": finish["svip"]["generated"],
             "prompt_tokens": finish["svip"]["prompt_tokens"]}
    check_timings(finish["timings"], usage, finish["svip"])

    chunks, _ = stream(f"{base_url}{TEXT}", {**payload, "stream_options": {"include_usage": True}})
    finish, last = chunks[-2], chunks[-1]
    assert "timings" not in finish and last["choices"] == []
    check_timings(last["timings"], last["usage"], finish["svip"])


# -- shutdown ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_answers_every_open_request(tiny_target: Path, tiny_draft_noisy: Path,
                                             sig: signal.Signals) -> None:
    port = free_port()
    cmd = [sys.executable, "-c", "import sys; from svip_local.cli import main; sys.exit(main())",
           "serve", "--target", str(tiny_target), "--draft", str(tiny_draft_noisy),
           "--n-ctx", "4096", "--parallel", "2", "--policy", "svip:0.3", "--port", str(port),
           "--model-name", "tiny"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    # 4000 tokens take seconds even for the tiny models: both are cut by the signal.
    long = body("The quick brown fox", 4000)
    lines: list[str] = []
    first_chunk = threading.Event()

    def read_stream() -> None:
        with httpx.stream("POST", f"{url}{TEXT}", json={**long, "stream": True},
                          timeout=30) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    lines.append(line)
                    first_chunk.set()

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"{url}/health").json()["slots"] == 2
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
                time.sleep(0.1)
        with ThreadPoolExecutor(2) as pool:
            streamed = pool.submit(read_stream)
            plain = pool.submit(httpx.post, f"{url}{CHAT}", timeout=30, json={
                "messages": [{"role": "user", "content": "The quick brown fox"}],
                "max_tokens": 4000, "temperature": 0})
            assert first_chunk.wait(10)
            wait_for_health(url, lambda h: h["generating"] == 2)
            proc.send_signal(sig)
            t0 = time.monotonic()
            streamed.result(timeout=10)
            answer = plain.result(timeout=10)
        out, err = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "timeout graceful shutdown" not in err, err
    assert "(2 slots of 4096 tokens)" in out
    assert lines[-1] == "data: [DONE]", lines[-3:]
    finish = json.loads(lines[-2][6:])
    assert finish["choices"][0]["finish_reason"] == "stop"  # "cancelled", as OpenAI says it
    assert finish["svip"]["generated"] < 4000
    if answer.status_code == 200:  # it ended before the signal reached it
        assert answer.json()["choices"][0]["finish_reason"] in ("stop", "length")
    else:
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "server_shutting_down"
