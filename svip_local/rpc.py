"""llama.cpp RPC servers seen from Python: endpoints, a handshake before llama.cpp connects, and
a watch on the connections llama.cpp then holds.

Why this exists: llama.cpp's RPC client ends the process (`GGML_ABORT`) on any failure — a
server that is not there at load, one that answers with another protocol version, one that
dies between two decodes — and a dead server's socket blocks forever without keepalive. So
before llama.cpp is asked to connect, each endpoint is tried here (connect, HELLO, version),
and between decodes the connections llama.cpp holds are polled: a closed one raises
`RemoteServerError` naming the endpoint, before llama.cpp would write to it and abort. Only a
server dying *during* a decode is beyond reach in-process; `describe_lost` then names it in
the last words llama.cpp prints.

Pure Python (sockets): `native` does the ctypes side.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from svip_local.errors import InvalidRequestError, RemoteServerError

# ggml-rpc.h of the llama.cpp llama-cpp-python 0.3.36 vendors: the client speaks 7.0.x and
# refuses another major version or a newer minor one.
RPC_PROTOCOL = (7, 0)
_HELLO = 14  # RPC_CMD_HELLO, fixed across versions
_CAPS = 24  # RPC_CONN_CAPS_SIZE: the HELLO request's capability bytes
CONNECT_TIMEOUT_S = 5.0
# A server's host that vanishes without closing the connection is noticed by TCP keepalive
# (idle, interval, probes): about 30 s, instead of a read that blocks forever.
KEEPALIVE = (15, 5, 3)
DEFAULT_PORT = 50052  # rpc-server's own default

# Between decodes a readable socket is not yet a hung-up one: llama.cpp's client sends from a
# thread of its own, so an answer may still be on its way. A hang-up is HUP/ERR, RDHUP (Linux:
# the server's FIN), or a read that peeks at end of stream.
_POLL_HUNG_UP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select,
                                                                            "POLLRDHUP", 0)
_POLL_WATCH = select.POLLIN | _POLL_HUNG_UP


def parse_endpoints(text: str | Sequence[str]) -> tuple[str, ...]:
    """`HOST:PORT[,HOST:PORT...]` (or a sequence of them) as llama.cpp takes them, checked.

    llama.cpp splits an endpoint at its first colon, so IPv6 literals cannot be given."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for raw in (s.strip() for s in items):
        host, sep, port = raw.rpartition(":")
        if not sep or not host or ":" in host or not port.isdigit() \
                or not 0 < int(port) < 65536:
            raise InvalidRequestError(
                f"RPC endpoint {raw!r} is not HOST:PORT (e.g. 192.168.1.20:{DEFAULT_PORT}; "
                "llama.cpp takes no IPv6 literal)")
        if raw in out:
            raise InvalidRequestError(f"RPC endpoint {raw} is given twice")
        out.append(raw)
    if not out:
        raise InvalidRequestError("no RPC endpoint given")
    return tuple(out)


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def handshake(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> tuple[str, int]:
    """Connect to `endpoint`, exchange llama.cpp's HELLO, check the protocol version and hang
    up; return the address connected to. Raises `RemoteServerError` saying what failed."""
    try:
        sock = socket.create_connection(_split(endpoint), timeout=timeout)
    except TimeoutError as exc:
        raise RemoteServerError(endpoint, f"no answer to connect within {timeout:g} s") from exc
    except OSError as exc:
        raise RemoteServerError(endpoint, f"cannot connect ({exc.strerror or exc}); is "
                                          "rpc-server running there?") from exc
    with sock:
        try:
            sock.sendall(struct.pack("<BQ", _HELLO, _CAPS) + bytes(_CAPS))
            size = struct.unpack("<Q", _read(sock, 8))[0]
            if size != 4 + _CAPS:
                raise RemoteServerError(endpoint, f"answered HELLO with {size} bytes, not an "
                                                  "RPC server of protocol 7")
            major, minor, patch = _read(sock, size)[:3]
        except TimeoutError as exc:
            raise RemoteServerError(endpoint, f"no HELLO answer within {timeout:g} s (an "
                                              "rpc-server serves one client at a time: is "
                                              "another one connected?)") from exc
        except OSError as exc:
            raise RemoteServerError(endpoint, f"handshake failed ({exc.strerror or exc})"
                                    ) from exc
        if major != RPC_PROTOCOL[0] or minor > RPC_PROTOCOL[1]:
            raise RemoteServerError(
                endpoint, f"speaks RPC protocol {major}.{minor}.{patch}; this llama.cpp speaks "
                          f"{RPC_PROTOCOL[0]}.{RPC_PROTOCOL[1]}: run the rpc-server built from "
                          "the same llama.cpp (scripts/build_llama_tools.sh)")
        host, port = sock.getpeername()[:2]
    return str(host), int(port)


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        data += chunk
    return data


@dataclass
class Links:
    """The connections llama.cpp holds to a model's servers, by endpoint: polled before every
    decode (a readable socket between requests means the server hung up), with keepalive on.

    `lost` is set once a server is found gone; the model then never frees its native memory,
    since llama.cpp would write to the dead connection and abort."""

    fds: dict[str, list[int]]
    lost: str | None = None
    _poll: select.poll = field(default_factory=select.poll, repr=False)

    def __post_init__(self) -> None:
        for fds in self.fds.values():
            for fd in fds:
                self._poll.register(fd, _POLL_WATCH)
        with _LIVE_LOCK:
            _LIVE.append(self)

    @classmethod
    def find(cls, peers: dict[str, tuple[str, int]]) -> Links:
        """The sockets of this process connected to each endpoint's address (`handshake`'s),
        with keepalive turned on."""
        by_addr = {addr: endpoint for endpoint, addr in peers.items()}
        fds: dict[str, list[int]] = {e: [] for e in peers}
        for fd in _socket_fds():
            peer = _peer_of(fd)
            if peer in by_addr:
                _keepalive(fd)
                fds[by_addr[peer]].append(fd)
        return cls(fds)

    def check(self) -> None:
        """Raise `RemoteServerError` if a server closed its connection (or was lost before)."""
        if self.lost is None:
            gone = self._gone()
            if gone:
                self.lost = gone[0]
        if self.lost is not None:
            raise RemoteServerError(self.lost, "closed the connection (the server stopped or "
                                               "its machine went away); the engine is closed")

    def _gone(self) -> list[str]:
        hit = {fd for fd, ev in self._poll.poll(0) if ev & _POLL_HUNG_UP or _at_eof(fd)}
        return [e for e, fds in self.fds.items() if hit.intersection(fds)]

    def forget(self) -> None:
        with _LIVE_LOCK:
            if self in _LIVE:
                _LIVE.remove(self)


_LIVE: list[Links] = []
_LIVE_LOCK = threading.Lock()


def describe_lost() -> str:
    """Which servers of the open models have hung up: for llama.cpp's last words when a
    server dies inside a decode (the client then aborts the process)."""
    gone = [e for links in list(_LIVE) for e in links._gone()]
    if not gone:
        return ""
    return (f"svip-local: RPC server {', '.join(gone)} closed the connection during a decode; "
            "llama.cpp's RPC client cannot recover from that and ends the process\n")


def _at_eof(fd: int) -> bool:
    """Whether the stream on `fd` has ended (peeked at, nothing consumed)."""
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _socket_fds() -> Iterable[int]:
    for name in os.listdir("/dev/fd"):
        fd = int(name)
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                yield fd
        except OSError:  # the listing's own fd, closed since
            continue


def _peer_of(fd: int) -> tuple[str, int] | None:
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM:
                return None
            host, port = s.getpeername()[:2]
            return str(host), int(port)
    except OSError:
        return None


def _keepalive(fd: int) -> None:
    idle, interval, count = KEEPALIVE
    with socket.socket(fileno=os.dup(fd)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPALIVE", idle),
                            ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
            opt = getattr(socket, name, None)
            if opt is not None:
                try:
                    s.setsockopt(socket.IPPROTO_TCP, opt, value)
                except OSError:
                    continue
