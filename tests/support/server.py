"""Helpers for the server tests: a real uvicorn on 127.0.0.1, and an engine that can be paused.

The server runs in a thread of the test process, on a port the OS picks, so tests talk real
HTTP over loopback (disconnects included) without a subprocess to manage. `PausableEngine`
wraps a real tiny-model Engine and can hold each generation at a gate or slow it down: queue
and disconnect tests then depend on events, not on how fast this machine decodes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing, contextmanager
from typing import Any

import httpx
import uvicorn

from svip_local.engine import Engine
from svip_local.events import Done, Event


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve `app` on 127.0.0.1:<free port>; yields the base URL, stops the server after."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                          timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def is_idle(health: dict[str, Any]) -> bool:
    return not health["generating"] and health["queued"] == 0


def wait_for_health(base_url: str, predicate: Callable[[dict[str, Any]], bool],
                    timeout: float = 5.0) -> dict[str, Any]:
    """Poll /health until `predicate` holds; returns that health body."""
    deadline = time.monotonic() + timeout
    while not predicate(health := httpx.get(f"{base_url}/health").json()):
        if time.monotonic() > deadline:
            raise AssertionError(f"/health never matched: {health}")
        time.sleep(0.02)
    return health


class PausableEngine:
    """A real Engine whose generations wait at `gate` before each event and then sleep
    `delay` seconds; a set `cancel` event releases the gate, as it would stop the engine.

    Everything else is delegated, so the server (and chat rendering) use the real engine.
    `dones` records the final event of every generation.
    """

    def __init__(self, engine: Engine, delay: float = 0.0) -> None:
        self._engine = engine
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()
        self.dones: list[Done] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def generate(self, prompt: Any, *, cancel: threading.Event | None = None,
                 **kwargs: Any) -> Iterator[Event]:
        events = self._engine.generate(prompt, cancel=cancel, **kwargs)
        return self._paced(events, cancel)  # type: ignore[arg-type]

    def _paced(self, events: Generator[Event], cancel: threading.Event | None
               ) -> Iterator[Event]:
        with closing(events):  # a wrapper closed early must free the real engine at once
            for event in events:
                while not self.gate.wait(0.01):
                    if cancel is not None and cancel.is_set():
                        break
                time.sleep(self.delay)
                if isinstance(event, Done):
                    self.dones.append(event)
                yield event


def fresh_engine_state(paused: PausableEngine, base_url: str) -> Iterator[None]:
    """For an autouse fixture: each test starts and ends with the engine ungated, undelayed
    and idle, whatever a test before it paused or cancelled."""
    paused.gate.set()
    paused.delay = 0.0
    yield
    paused.gate.set()
    paused.delay = 0.0
    wait_for_health(base_url, is_idle)
