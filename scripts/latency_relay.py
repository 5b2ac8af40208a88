#!/usr/bin/env python3
"""A TCP relay on 127.0.0.1 that adds a fixed delay to what the client sends: a network's
round trip, made on one machine whose kernel has no `netem` qdisc (scripts/rpc_loopback.sh
uses `tc netem` on a veth pair where it can, this elsewhere).

    latency_relay.py --delay-ms 5 LISTEN_PORT:TARGET_HOST:TARGET_PORT [...]

Each chunk the client sends is forwarded `delay` after it arrived (in order, without holding
back the chunks behind it, so bandwidth is untouched); the answers come back at once: a round
trip grows by `delay`, as with netem on the client's side of a link. A side that closes is
closed on the other side too, so a server that dies is seen by the client as over a network.
Prints "ready" once every port listens; runs until killed. Standard library only.
"""

from __future__ import annotations

import argparse
import queue
import socket
import sys
import threading
import time

CHUNK = 1 << 20


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _pump(src: socket.socket, dst: socket.socket, delay_s: float) -> None:
    """Forward src -> dst, each chunk `delay_s` after it arrived; EOF or an error on either
    side ends both directions."""
    pending: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def write() -> None:
        try:
            while True:
                due, data = pending.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src, dst)

    writer = threading.Thread(target=write, daemon=True) if delay_s > 0 else None
    if writer is not None:
        writer.start()
    try:
        while True:
            data = src.recv(CHUNK)
            if writer is None:
                if not data:
                    break
                dst.sendall(data)
            else:
                pending.put((time.monotonic() + delay_s, data))
                if not data:
                    return
    except OSError:
        pass
    if writer is not None:
        pending.put((0.0, b""))
    else:
        _close(src, dst)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


def _serve(listener: socket.socket, target: tuple[str, int], delay_s: float) -> None:
    while True:
        client, _ = listener.accept()
        try:
            server = socket.create_connection(target)
        except OSError:
            client.close()  # the target is down: the client sees a closed connection
            continue
        for s in (client, server):
            _nodelay(s)
        threading.Thread(target=_pump, args=(client, server, delay_s), daemon=True).start()
        threading.Thread(target=_pump, args=(server, client, 0.0), daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, required=True,
                        help="added to each chunk the client sends (the round trip's growth)")
    parser.add_argument("routes", nargs="+", metavar="LISTEN_PORT:TARGET_HOST:TARGET_PORT")
    args = parser.parse_args()
    threads = []
    for route in args.routes:
        listen, host, port = route.split(":")
        listener = socket.create_server(("127.0.0.1", int(listen)))
        threads.append(threading.Thread(target=_serve, daemon=True,
                                        args=(listener, (host, int(port)),
                                              args.delay_ms / 1000)))
    for t in threads:
        t.start()
    print("ready", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
