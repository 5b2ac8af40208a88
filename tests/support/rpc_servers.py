"""llama.cpp's ggml-rpc-server (built by scripts/build_llama_tools.sh) on loopback ports, for
the tests marked `rpc`; and a latency relay in front of one (scripts/latency_relay.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def server_binary() -> Path | None:
    """$SVIP_LOCAL_RPC_SERVER, else where scripts/build_llama_tools.sh puts it."""
    env = os.environ.get("SVIP_LOCAL_RPC_SERVER")
    if env:
        return Path(env)
    tools = Path(os.environ.get("SVIP_LOCAL_TOOLS_DIR",
                                Path.home() / ".cache" / "svip-local" / "tools"))
    path = tools / "build-cpu" / "bin" / "ggml-rpc-server"
    return path if path.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the process for port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def start_server(binary: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port), "-t", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, proc)
    return f"127.0.0.1:{port}", proc


def start_relay(target: str, delay_ms: float) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "latency_relay.py"),
                             "--delay-ms", str(delay_ms), f"{port}:{target}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, proc)
    return f"127.0.0.1:{port}", proc


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()
