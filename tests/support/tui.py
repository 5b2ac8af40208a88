"""Driving the Textual app from plain pytest: an event loop per test, waiting on workers."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from textual.pilot import Pilot

from tui.app import ChatApp
from tui.widgets import PromptInput


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
