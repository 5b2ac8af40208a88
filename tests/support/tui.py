"""Driving the Textual app from plain pytest: an event loop per test, waiting on workers, a
host app for one widget or screen, and a fake registry for the pair screen."""

from __future__ import annotations

import asyncio
import functools
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Input

import tui
from svip_local.registry import PairStatus, Registry, pull, status
from svip_local.registry.spec import parse_document
from tests.support.registry_fakes import FakeHub, hf_source, isolate, random_bytes
from tui.app import ChatApp
from tui.config import ChatSettings
from tui.widgets import PromptInput

APP_CSS = Path(tui.__file__).with_name("app.tcss")
# Settings the settings screen is shown with (every field different from the defaults).
BASE = ChatSettings(system_prompt="Be brief.", policy="pmin:0.5", temperature=0.7, max_tokens=64,
                    n_ctx=1024, n_gpu_layers=0, n_threads=2)


def sync(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in its own event loop (no pytest async plugin needed)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


async def until(pilot: Pilot[Any], condition: Callable[[], object],
                timeout: float = 20.0) -> None:
    """Let the app run until `condition()` holds (workers post from their threads)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.02)


async def send(pilot: Pilot[Any], text: str) -> None:
    app = pilot.app
    assert isinstance(app, ChatApp)
    await until(pilot, lambda: app.engine is not None)
    prompt = app.query_one(PromptInput)
    prompt.focus()
    prompt.value = text
    await pilot.press("enter")
    await until(pilot, lambda: not app.generating)


class Host(App[None]):
    """Mounts the given widgets (styled by the chat app's own stylesheet) and, if given, pushes
    one screen, keeping what it dismisses with. Keeps the Input.Submitted messages it receives
    and counts the app actions widgets bind to (quit, edit_last) instead of running them."""

    CSS_PATH = APP_CSS
    TITLE = "host"

    def __init__(self, *widgets: Widget, screen: Screen[Any] | None = None) -> None:
        super().__init__()
        self._widgets = widgets
        self._screen = screen
        self.submitted: list[Input.Submitted] = []
        self.results: list[object] = []
        self.quits = 0
        self.edits = 0

    def compose(self) -> ComposeResult:
        yield from self._widgets

    def on_mount(self) -> None:
        if self._screen is not None:
            self.push_screen(self._screen, self.results.append)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.submitted.append(event)

    async def action_quit(self) -> None:
        self.quits += 1

    def action_edit_last(self) -> None:
        self.edits += 1


def fake_registry_toml() -> str:
    """Three pairs: "alpha" (pulled below), "beta" (sharing alpha's target, so only its draft is
    missing) and "gamma" (nothing downloaded). Sizes are what the registry announces."""
    lines = []
    alpha_target = ("alpha-t.gguf", "org/alpha-GGUF", None)
    files = {
        "alpha": (alpha_target, ("alpha-d.gguf", "org/alpha-GGUF", None)),
        "beta": (alpha_target, ("beta-d.gguf", "org/beta-GGUF", 900)),
        "gamma": (("gamma-t.gguf", "org/gamma-GGUF", 1_250_000_000),
                  ("gamma-d.gguf", "org/gamma-GGUF", 350_000_000)),
    }
    for name, roles in files.items():
        lines += [f'[pairs."{name}"]', 'description = "test pair"', "verified = true",
                  f'[pairs."{name}".settings]', "n_ctx = 512", 'policy = "auto"']
        for role, (filename, repo, size) in zip(("target", "draft"), roles, strict=True):
            lines += [f'[pairs."{name}".{role}]', f'filename = "{filename}"']
            if size is not None:
                lines.append(f"size = {size}")
            lines.append(f'[[pairs."{name}".{role}.sources]]')
            source = hf_source(repo, filename)
            lines += [f'{key} = "{value}"' for key, value in source.items()]
    return "\n".join(lines) + "\n"


def fake_pair_statuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[PairStatus]:
    """The registry's statuses for the three fake pairs, after pulling "alpha" from a fake hub
    on 127.0.0.1 (its files: 1,500 and 700 bytes of random data)."""
    isolate(tmp_path, monkeypatch)
    document = parse_document(tomllib.loads(fake_registry_toml()), "test registry")
    registry = Registry(pairs=document)
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add("org/alpha-GGUF", "alpha-t.gguf", random_bytes(1500, seed=1))
        hub.add("org/alpha-GGUF", "alpha-d.gguf", random_bytes(700, seed=2))
        pull("alpha", registry=registry)
    return [status(name, registry=registry) for name in registry.names()]
