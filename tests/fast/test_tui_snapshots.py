"""Snapshots of the chat's screens and widgets (pytest-textual-snapshot's `snap_compare`).

Each snapshot is an SVG under tests/fast/__snapshots__/test_tui_snapshots/, taken at 80x24 from a
host app holding only the widget or screen under test, with fixed data: no paths, times or
machine-specific text appear on screen, and input cursors do not blink. After a deliberate
change of the look, regenerate them with `pytest tests/fast/test_tui_snapshots.py --snapshot-update`
and review the SVGs (a new Textual version may also change them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from textual import events
from textual.pilot import Pilot
from textual.widgets import Footer, Input, Static, TextArea

from svip_local import GenerationStats
from svip_local.conversation import Message
from tests.support.tui import BASE, Host, fake_pair_statuses
from tui.app import PLACEHOLDER
from tui.screens import PairScreen, SettingsScreen
from tui.speed import measured
from tui.widgets import MessageList, Note, PromptInput, Reply, StatusBar, UserMessage

SIZE = (80, 24)
SnapCompare = Callable[..., bool]


async def still_cursors(pilot: Pilot) -> None:
    """Stop every input's cursor blinking, so the picture does not depend on timing."""
    await pilot.pause()
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    for box in pilot.app.screen.query(TextArea):
        box.cursor_blink = False


def test_settings_screen(snap_compare: SnapCompare) -> None:
    assert snap_compare(Host(screen=SettingsScreen(BASE)), terminal_size=SIZE,
                        run_before=still_cursors)


def test_settings_screen_with_an_error(snap_compare: SnapCompare) -> None:
    async def bad_temperature(pilot: Pilot) -> None:
        await still_cursors(pilot)
        pilot.app.screen.query_one("#temperature", Input).value = "hot"
        await pilot.press("ctrl+s")
        await pilot.pause()
        error = pilot.app.screen.query_one("#settings-error", Static)
        assert "temperature" in str(error.content)  # still open, showing why

    assert snap_compare(Host(screen=SettingsScreen(BASE)), terminal_size=SIZE,
                        run_before=bad_temperature)


def test_pair_screen_with_a_fake_registry(snap_compare: SnapCompare, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = fake_pair_statuses(tmp_path, monkeypatch)
    assert snap_compare(Host(screen=PairScreen(pairs)), terminal_size=SIZE)


def test_reply_coloured_by_origin(snap_compare: SnapCompare) -> None:
    reply = Message("assistant", "The quick brown fox jumps over the lazy dog, then naps.",
                    ((10, True), (6, False), (13, True), (4, False), (9, True)), "length")
    status = StatusBar()
    status.policy, status.device = "svip:0.3", "CPU"
    messages = MessageList(UserMessage("Tell me about the fox."), Reply(reply),
                           Note("Stopped at the stop string."), id="messages",
                           classes="-origin")

    async def show_status(pilot: Pilot) -> None:
        status.update("42.0 tok/s │ accept 75% (1.88/round) │ svip:0.3 │ CPU")
        await pilot.pause()

    assert snap_compare(Host(messages, status), terminal_size=SIZE, run_before=show_status)


def test_prompt_holding_a_pasted_function(snap_compare: SnapCompare) -> None:
    """A bracketed paste of four lines (as tmux sends it, lines ended by CR) fills four lines
    of the grown prompt; the status bar shows the last reply's comparison and its source."""
    prompt = PromptInput(placeholder=PLACEHOLDER, id="prompt")
    status = StatusBar()
    status.policy, status.device = "svip:0.3", "CPU"
    stats = GenerationStats(generated=64, rounds=20, drafted=60, accepted=44, prefill_s=0.4,
                            wall_s=3.2)

    async def paste(pilot: Pilot) -> None:
        await still_cursors(pilot)
        prompt.focus()
        await pilot.press(*"Fix this:", "ctrl+j")
        pilot.app.post_message(events.Paste(
            "def add(a, b):\r    return a - b\r\rprint(add(1, 2))"))
        status.show_final(stats, measured(stats, 0.075))
        await pilot.pause()

    app = Host(MessageList(UserMessage("Hello"), id="messages"), prompt, status,
               Footer(compact=True))
    assert snap_compare(app, terminal_size=SIZE, run_before=paste)


def test_empty_prompt_shows_how_to_use_it(snap_compare: SnapCompare) -> None:
    prompt = PromptInput(placeholder=PLACEHOLDER, id="prompt")

    async def focus(pilot: Pilot) -> None:
        await still_cursors(pilot)
        prompt.focus()
        await pilot.pause()

    app = Host(MessageList(id="messages"), prompt, StatusBar(), Footer(compact=True))
    assert snap_compare(app, terminal_size=SIZE, run_before=focus)
