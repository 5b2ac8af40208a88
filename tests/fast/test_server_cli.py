"""`svip-local serve` as a user runs it: a subprocess on 127.0.0.1 that answers, then stops
cleanly on Ctrl+C; and the engine package never loads the server stack."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_answers_and_stops_on_ctrl_c(tiny_target: Path, tiny_draft_noisy: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-c", "import sys; from svip_local.cli import main; sys.exit(main())",
           "serve", "--target", str(tiny_target), "--draft", str(tiny_draft_noisy),
           "--n-ctx", "256", "--policy", "svip:0.3", "--port", str(port), "--max-queue", "2",
           "--model-name", "tiny", "--api-key", "k"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{url}/health").json()
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.1)
        assert health["model"] == "tiny" and health["max_queue"] == 2
        resp = httpx.post(f"{url}/v1/chat/completions", headers={"authorization": "Bearer k"},
                          json={"messages": [{"role": "user", "content": "Hi"}],
                                "max_tokens": 4, "temperature": 0})  # sampled: may end at once
        assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] > 0
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"serving tiny on http://127.0.0.1:{port}/v1" in out


def test_engine_does_not_import_the_server() -> None:
    code = "import sys, svip_local, svip_local.engine, svip_local.chat; print(*sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    mods = set(out.stdout.split())
    assert "svip_local.chat" in mods
    assert not {m for m in mods if m.split(".")[0] in ("starlette", "uvicorn", "openai")}
    assert "svip_local.server" not in mods
