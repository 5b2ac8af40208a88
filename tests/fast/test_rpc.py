"""Targets across llama.cpp RPC servers.

Everywhere: endpoint parsing, the handshake's specific errors (against fake servers), the
watch on connections, the fingerprint, and the clear error of a build without RPC. Where
llama-cpp-python is built with RPC and ggml-rpc-server is built (`rpc` marker, run by
scripts/rpc_loopback.sh): a tiny target across two loopback servers, greedy identity with the
local target, and servers that are missing or die, between rounds and inside a decode.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from svip_local import (
    EngineClosedError,
    InvalidRequestError,
    RemoteServerError,
    RpcUnavailableError,
    Token,
    native,
    rpc,
)
from svip_local.calibration import store
from svip_local.calibration.machine import Fingerprint, PairIdentity, fingerprint
from svip_local.cli import main
from svip_local.config import EngineConfig
from svip_local.engine import Engine
from svip_local.native import Model
from tests.support.rpc_servers import server_binary, start_relay, start_server, stop

# -- endpoints and configuration --------------------------------------------------------------


def test_endpoints_are_parsed_from_a_list_or_a_comma_separated_string() -> None:
    assert rpc.parse_endpoints("10.0.0.2:50052, gpu-box:6000") == ("10.0.0.2:50052",
                                                                     "gpu-box:6000")
    assert EngineConfig(rpc_servers="a:1,b:2").rpc_servers == ("a:1", "b:2")  # type: ignore[arg-type]
    assert EngineConfig(rpc_servers=("a:1",)).rpc_servers == ("a:1",)


@pytest.mark.parametrize("bad", ["nohost", ":50052", "host:", "host:port", "host:0",
                                 "host:70000", "[::1]:50052", "a:1,a:1", ""])
def test_bad_endpoints_are_refused_with_the_form_expected(bad: str) -> None:
    with pytest.raises(InvalidRequestError, match="HOST:PORT|twice|no RPC endpoint"):
        rpc.parse_endpoints(bad)


def test_the_fingerprint_holds_the_endpoints_and_a_machine_without_keeps_its_key() -> None:
    plain = fingerprint(EngineConfig(), gpu="cpu", default_threads=2)
    remote = fingerprint(EngineConfig(rpc_servers=("a:1", "b:2")), gpu="cpu",  # type: ignore[arg-type]
                         default_threads=2)
    assert plain.rpc == "" and plain.n_gpu_layers == "0/0"
    assert remote.rpc == "a:1,b:2/" and remote.n_gpu_layers == "-1/-1"
    pair = PairIdentity("t.gguf", 1, "d.gguf", 2)
    assert store.calibration_path(pair, plain) != store.calibration_path(pair, remote)
    # A calibration stored before the rpc field existed is still found.
    legacy = Fingerprint(plain.cpu, plain.gpu, plain.n_gpu_layers, plain.threads)
    assert store.calibration_path(pair, legacy) == store.calibration_path(pair, plain)


# -- the handshake, against fake servers -------------------------------------------------------


def _fake_server(answer: bytes | None) -> tuple[str, socket.socket, threading.Thread]:
    """A listener that reads a HELLO and answers `answer` (None: never answers)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(1 + 8 + 24)
            if answer is not None:
                conn.sendall(answer)
            time.sleep(1.5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"127.0.0.1:{port}", listener, thread


def _hello_answer(major: int, minor: int) -> bytes:
    return struct.pack("<Q", 28) + bytes([major, minor, 0, 0]) + bytes(24)


def test_handshake_accepts_the_same_protocol_and_returns_the_address() -> None:
    endpoint, listener, _ = _fake_server(_hello_answer(*rpc.RPC_PROTOCOL))
    with listener:
        assert rpc.handshake(endpoint) == ("127.0.0.1", int(endpoint.split(":")[1]))


def test_handshake_names_another_protocol_version() -> None:
    endpoint, listener, _ = _fake_server(_hello_answer(rpc.RPC_PROTOCOL[0] + 1, 0))
    with listener, pytest.raises(RemoteServerError, match=r"protocol 8\.0\.0") as err:
        rpc.handshake(endpoint)
    assert err.value.endpoint == endpoint


def test_handshake_times_out_on_a_server_that_does_not_answer() -> None:
    endpoint, listener, _ = _fake_server(None)
    start = time.monotonic()
    with listener, pytest.raises(RemoteServerError, match="no HELLO answer within 0.5 s"):
        rpc.handshake(endpoint, timeout=0.5)
    assert time.monotonic() - start < 1.4


def test_handshake_says_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: the connection is refused
        with pytest.raises(RemoteServerError, match=rf"127\.0\.0\.1:{port}: cannot connect"):
            rpc.handshake(f"127.0.0.1:{port}")


# -- the watch on connections ------------------------------------------------------------------


def test_links_find_the_connection_and_see_the_server_hang_up() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    endpoint = f"127.0.0.1:{port}"
    client = socket.create_connection(("127.0.0.1", port))
    server_side, _ = listener.accept()
    links = rpc.Links.find({endpoint: ("127.0.0.1", port)})
    try:
        assert links.fds[endpoint] == [client.fileno()]
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        links.check()  # alive: nothing raised
        server_side.close()
        time.sleep(0.05)
        with pytest.raises(RemoteServerError, match="closed the connection") as err:
            links.check()
        assert err.value.endpoint == endpoint and links.lost == endpoint
        assert endpoint in rpc.describe_lost()
    finally:
        links.forget()
        client.close()
        listener.close()
    assert rpc.describe_lost() == ""


# -- a build without RPC -----------------------------------------------------------------------


@pytest.mark.skipif(native.supports_rpc(), reason="this llama-cpp-python has RPC built in")
def test_a_build_without_rpc_says_how_to_rebuild(tiny_target: Path) -> None:
    with pytest.raises(RpcUnavailableError, match=r'CMAKE_ARGS="-DGGML_RPC=on" pip install'):
        Model(tiny_target, rpc_servers=("127.0.0.1:50052",))
    with pytest.raises(RpcUnavailableError, match="built without RPC"):
        Engine(tiny_target, rpc_servers="127.0.0.1:50052")


def test_the_cli_takes_rpc_and_refuses_a_bad_endpoint_before_loading(
        tiny_target: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--target", str(tiny_target), "--rpc", "gpu-box",
                 "--prompt", "x", "--threads", "1"]) == 1
    assert "RPC endpoint 'gpu-box' is not HOST:PORT" in capsys.readouterr().err
    code = main(["generate", "--target", str(tiny_target), "--rpc", "127.0.0.1:9",
                 "--prompt", "x", "--threads", "1", "--max-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 1
    if native.supports_rpc():
        assert "RPC server 127.0.0.1:9: cannot connect" in err
    else:
        assert "built without RPC" in err and "-DGGML_RPC=on" in err


# -- with RPC compiled in and the server built -------------------------------------------------

BINARY = server_binary()
F = TypeVar("F", bound=Callable[..., Any])


def needs_rpc(test: F) -> F:
    """Marked `rpc`; skipped, with the reason, without an RPC build or the server binary."""
    for mark in (
        pytest.mark.rpc,
        pytest.mark.skipif(not native.supports_rpc(),
                           reason="llama-cpp-python built without RPC (scripts/rpc_loopback.sh "
                                  f"runs these tests; or rebuild: {native.RPC_BUILD})"),
        pytest.mark.skipif(BINARY is None,
                           reason="no ggml-rpc-server: scripts/build_llama_tools.sh builds it "
                                  "(or set SVIP_LOCAL_RPC_SERVER)"),
    ):
        test = mark(test)
    return test


@pytest.fixture
def two_servers() -> Iterator[tuple[tuple[str, str], list[subprocess.Popen[bytes]]]]:
    assert BINARY is not None
    (a, pa), (b, pb) = start_server(BINARY), start_server(BINARY)
    yield (a, b), [pa, pb]
    stop(pa, pb)


@needs_rpc
@pytest.mark.parametrize("policy", ["none", "constant:4", "lookup:2:4"])
def test_greedy_output_across_two_servers_equals_the_local_target(
        two_servers: tuple[tuple[str, str], list[subprocess.Popen[bytes]]],
        tiny_target: Path, tiny_draft_noisy: Path, policy: str) -> None:
    endpoints, _ = two_servers
    with Engine(tiny_target, n_ctx=256, n_threads=1, policy="none") as local:
        want = local.complete("The quick brown fox", max_tokens=40, ignore_eos=True)
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=256, n_threads=1,
                rpc_servers=endpoints) as remote:
        assert remote.target_model.links is not None
        assert set(remote.target_model.links.fds) == set(endpoints)
        assert all(remote.target_model.links.fds.values())
        assert remote.draft_model is not None and remote.draft_model.links is None
        assert remote.machine.rpc == ",".join(endpoints) + "/"
        got = remote.complete("The quick brown fox", max_tokens=40, ignore_eos=True,
                              policy=policy)
    assert got.tokens == want.tokens


@needs_rpc
def test_a_server_that_is_not_there_at_load_is_named(tiny_target: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(RemoteServerError, match="cannot connect") as err:
            Engine(tiny_target, n_ctx=256, n_threads=1, rpc_servers=endpoint)
    assert err.value.endpoint == endpoint


@needs_rpc
def test_a_server_killed_between_rounds_closes_the_engine_with_its_name(
        two_servers: tuple[tuple[str, str], list[subprocess.Popen[bytes]]],
        tiny_target: Path, tiny_draft_noisy: Path) -> None:
    (first, second), procs = two_servers
    engine = Engine(tiny_target, tiny_draft_noisy, n_ctx=256, n_threads=1,
                    rpc_servers=(first, second), policy="constant:2")
    events = engine.generate("The quick brown fox", max_tokens=60, ignore_eos=True)
    assert isinstance(next(e for e in events if isinstance(e, Token)), Token)
    stop(procs[1])  # the second server dies; its connection closes
    time.sleep(0.1)
    start = time.monotonic()
    with pytest.raises(RemoteServerError, match="closed the connection") as err:
        for _ in events:
            pass
    assert time.monotonic() - start < 5
    assert err.value.endpoint == second
    assert engine.closed
    with pytest.raises(EngineClosedError):
        engine.complete("again", max_tokens=4)
    engine.close()  # harmless twice: nothing is freed under the dead server


# A generation through a relay that delays each request by 100 ms: a kill lands inside a
# decode. llama.cpp's RPC client then aborts the process; it must end at once, naming the
# server, instead of hanging.
_CHILD = """
import sys
from svip_local import Engine
engine = Engine(sys.argv[1], n_ctx=256, n_threads=1, rpc_servers=sys.argv[2], policy="none")
print("generating", flush=True)
try:
    engine.complete("The quick brown fox", max_tokens=400, ignore_eos=True)
except Exception as exc:  # the server died between two decodes: the error, not an abort
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(3)
print("finished", flush=True)
"""


@needs_rpc
def test_a_server_killed_inside_a_decode_ends_the_process_naming_it(tiny_target: Path
                                                                    ) -> None:
    assert BINARY is not None
    server, proc = start_server(BINARY)
    relay, relay_proc = start_relay(server, 100)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tiny_target), relay],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "generating"
        time.sleep(0.5)
        stop(proc)
        start = time.monotonic()
        _, err = child.communicate(timeout=30)
    finally:
        child.kill()
        stop(relay_proc)
    assert time.monotonic() - start < 10
    assert child.returncode != 0
    assert f"RPC server {relay}" in err
