#!/usr/bin/env python3
"""Bounded load test of `svip-local serve` on loopback: N clients for M seconds, then it stops.

Each client sends greedy chat requests in a loop until the time is up, in turn streaming,
non-streaming, and streaming but disconnecting after the first chunk (which must cancel the
generation without disturbing the others). Every answer is checked: a 200 must carry exactly
the text of a reference request made before the load (any KV-cache damage from the
cancellations would change it), a 503 must be the documented "server busy" error, and
anything else is an error; a request with no complete answer (timeout, stream cut before
`[DONE]`) is lost. Afterwards the server must drain to idle and still answer correctly. With
--pid, the server's RSS is read after warm-up and after the drain.

    python scripts/load_test_server.py --url http://127.0.0.1:8000 --clients 8 --seconds 10

Prints a JSON report; exits 1 when a request was lost or wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import httpx

MESSAGES = [{"role": "user", "content": "Tell me about the quick brown fox."}]
BUSY_BACKOFF_S = 0.05  # shorter than the server's Retry-After: a test wants pressure
REQUEST_TIMEOUT_S = 30.0


@dataclass
class Tally:
    requests: int = 0
    ok: int = 0
    busy: int = 0  # the documented 503
    aborted: int = 0  # disconnected on purpose after the first chunk
    errors: int = 0
    lost: int = 0
    samples: list[str] = field(default_factory=list)  # the first few problems, for people

    def problem(self, kind: str, what: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.samples) < 5:
            self.samples.append(f"{kind}: {what}")

    def add(self, other: Tally) -> None:
        for f in fields(self):
            if f.name != "samples":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.samples += other.samples[: 5 - len(self.samples)]


class Client:
    """One simulated assistant with its own connection pool."""

    def __init__(self, url: str, api_key: str | None, max_tokens: int, reference: str) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S)
        self.body = {"messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0}
        self.reference = reference
        self.tally = Tally()

    def run(self, deadline: float, abort_every: int) -> None:
        with self.http:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                abort = abort_every > 0 and i % abort_every == 0
                self.tally.requests += 1
                try:
                    busy = self.stream(abort) if abort or i % 2 else self.plain()
                except httpx.TimeoutException as exc:
                    self.tally.problem("lost", f"timeout: {exc!r}")
                    busy = False
                except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
                    self.tally.problem("errors", repr(exc))  # unreadable or malformed
                    busy = False
                if busy:
                    time.sleep(BUSY_BACKOFF_S)

    def plain(self) -> bool:
        resp = self.http.post("/v1/chat/completions", json=self.body)
        if self.busy(resp):
            return True
        if resp.status_code != 200:
            self.tally.problem("errors", f"status {resp.status_code}: {resp.text[:200]}")
            return False
        self.check_text(resp.json()["choices"][0]["message"]["content"])
        return False

    def stream(self, abort: bool) -> bool:
        with self.http.stream("POST", "/v1/chat/completions",
                              json={**self.body, "stream": True}) as resp:
            if resp.status_code != 200:
                resp.read()
                if self.busy(resp):
                    return True
                self.tally.problem("errors", f"status {resp.status_code}: {resp.text[:200]}")
                return False
            text, finished, complete = [], 0, False
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                if abort:
                    self.tally.aborted += 1
                    return False  # leaving the block closes the connection mid-stream
                if line == "data: [DONE]":
                    complete = True
                    break
                chunk = json.loads(line[len("data: "):])
                if "error" in chunk:
                    self.tally.problem("errors", f"error event: {chunk['error']}")
                    return False
                choice = chunk["choices"][0]
                text.append(choice["delta"].get("content") or "")
                finished += choice["finish_reason"] is not None
        if not complete:
            self.tally.problem("lost", "stream ended without [DONE]")
        elif finished != 1:
            self.tally.problem("errors", f"{finished} finish chunks")
        else:
            self.check_text("".join(text))
        return False

    def busy(self, resp: httpx.Response) -> bool:
        if resp.status_code != 503:
            return False
        if resp.json().get("error", {}).get("code") == "server_busy":
            self.tally.busy += 1
        else:
            self.tally.problem("errors", f"undocumented 503: {resp.text[:200]}")
        return True

    def check_text(self, text: str) -> None:
        if text == self.reference:
            self.tally.ok += 1
        else:
            self.tally.problem("errors", f"text differs from the reference: {text[:60]!r}")


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    import psutil

    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def wait_idle(http: httpx.Client, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = http.get("/health").json()
        if not health["generating"] and health["queued"] == 0:
            return True
        time.sleep(0.05)
    return False


def reference_text(http: httpx.Client, max_tokens: int) -> str:
    resp = http.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": max_tokens,
                                                   "temperature": 0})
    resp.raise_for_status()
    return str(resp.json()["choices"][0]["message"]["content"])


def run_load(url: str, *, clients: int, seconds: float, max_tokens: int = 16,
             abort_every: int = 5, warmup: int = 5, api_key: str | None = None,
             pid: int | None = None) -> dict[str, Any]:
    """Run the load and return the report (see the module docstring)."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S) as http:
        reference = reference_text(http, max_tokens)
        for _ in range(warmup):
            reference_text(http, max_tokens)
        rss_before = rss_mib(pid)
        workers = [Client(url, api_key, max_tokens, reference) for _ in range(clients)]
        start = time.monotonic()
        threads = [threading.Thread(target=w.run, args=(start + seconds, abort_every))
                   for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - start
        drained = wait_idle(http, timeout=10)
        final_ok = drained and reference_text(http, max_tokens) == reference
        rss_after = rss_mib(pid)
    total = Tally()
    for w in workers:
        total.add(w.tally)
    return {"clients": clients, "seconds": seconds, "wall_s": round(wall, 2), **asdict(total),
            "drained": drained, "final_ok": final_ok, "rss_before_mib": rss_before,
            "rss_after_mib": rss_after}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--abort-every", type=int, default=5,
                        help="every Nth request of a client disconnects mid-stream (0: none)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--pid", type=int, default=None, help="server process, for its RSS")
    args = parser.parse_args(argv)
    report = run_load(args.url, clients=args.clients, seconds=args.seconds,
                      max_tokens=args.max_tokens, abort_every=args.abort_every,
                      api_key=args.api_key, pid=args.pid)
    print(json.dumps(report, indent=2))
    good = report["errors"] == 0 and report["lost"] == 0 and report["final_ok"]
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
