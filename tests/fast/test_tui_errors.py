"""The app shows what went wrong and keeps running: missing model, context full, bad settings;
and it quits cleanly, freeing the engine, even in the middle of a reply."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from textual.widgets import Input, ProgressBar, Select, Static

import tui.backend
from svip_local.events import Round
from tests.support.tui import send, sync, until
from tui.app import ChatApp
from tui.config import ChatSettings, ModelSource, parse_form
from tui.events import PullProgress
from tui.screens import SettingsScreen
from tui.widgets import Note, PromptInput, Reply, UserMessage


def errors(app: ChatApp) -> list[str]:
    return [str(n.content) for n in app.query(Note) if n.has_class("-error")]


@sync
async def test_a_missing_model_file_is_reported_in_the_app(tmp_path: Path) -> None:
    app = ChatApp(ModelSource(target=tmp_path / "missing.gguf"))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: errors(app))
        assert "model file not found" in errors(app)[0]
        assert "no model loaded" in str(app.query_one("#status", Static).content)
        app.query_one(PromptInput).value = "hello?"
        await pilot.press("enter")
        assert not app.conversation.messages and app.is_running


@sync
async def test_a_pair_not_downloaded_names_the_pull_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVIP_LOCAL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    app = ChatApp(ModelSource(pair="qwen2.5-coder-1.5b", pull=False))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: errors(app))
        assert "svip-local pull qwen2.5-coder-1.5b" in errors(app)[0]


@sync
async def test_pull_progress_shows_a_progress_bar(tiny_target: Path) -> None:
    app = ChatApp(ModelSource(target=tiny_target), ChatSettings(n_threads=1))
    async with app.run_test(size=(80, 24)) as pilot:
        app.post_message(PullProgress("target: download", 250, 1000))
        await pilot.pause()
        bar = app.query_one("#pull-bar", ProgressBar)
        assert bar.display and bar.total == 1000 and bar.progress == 250


@sync
async def test_a_message_too_long_for_the_context_comes_back_to_the_prompt(
        tiny_target: Path) -> None:
    settings = ChatSettings(n_ctx=64, max_tokens=16, n_threads=1)
    app = ChatApp(ModelSource(target=tiny_target), settings)
    async with app.run_test(size=(80, 24)) as pilot:
        long = "the quick brown fox jumps over the lazy dog " * 40
        await send(pilot, long)
        assert "context is full" in errors(app)[0]
        assert app.query_one(PromptInput).value == long.strip()
        assert not app.conversation.messages
        assert not app.query(UserMessage) and not app.query(Reply)


@pytest.mark.parametrize("policy, parameter, temperature, max_tokens, error", [
    ("none", "1", "0", "8", "takes no parameter"),
    ("svip", "2", "0", "8", "svip threshold h must be in"),
    ("constant", "x", "0", "8", "bad argument in policy"),
    ("svip", "", "-1", "8", "temperature"),
    ("svip", "", "0", "0", "max tokens"),
])
def test_settings_form_errors_name_the_field(policy: str, parameter: str, temperature: str,
                                             max_tokens: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_form("", policy, parameter, temperature, max_tokens, ChatSettings())


def test_settings_form_builds_policy_specs() -> None:
    form = parse_form(" Be brief. ", "pmin", "0.5", "0.7", "64", ChatSettings(n_threads=1))
    assert form == ChatSettings(system_prompt="Be brief.", policy="pmin:0.5", temperature=0.7,
                                max_tokens=64, n_threads=1)
    # svip-cost needs this machine's calibration: the engine checks it when it is applied.
    assert parse_form("", "svip-cost", "", "0", "8", ChatSettings()).policy == "svip-cost"


@sync
async def test_settings_validate_and_change_the_policy(tiny_target: Path,
                                                       tiny_draft_noisy: Path) -> None:
    app = ChatApp(ModelSource(target=tiny_target, draft=tiny_draft_noisy),
                  ChatSettings(policy="svip", max_tokens=8, n_ctx=256, n_threads=1))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.engine is not None)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        screen = app.screen
        screen.query_one("#temperature", Input).value = "hot"
        await pilot.click("#save")
        assert "temperature" in str(screen.query_one("#settings-error", Static).content)
        screen.query_one("#temperature", Input).value = "0"
        screen.query_one("#policy", Select).value = "pmin"
        screen.query_one("#parameter", Input).value = "0.5"
        screen.query_one("#system", Input).value = "Answer in French."
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        assert app.policy is not None and app.policy.name == "pmin:0.5"
        assert app.conversation.system_prompt == "Answer in French."
        await send(pilot, "Bonjour")
        assert "pmin:0.5" in str(app.query_one("#status", Static).content)


@sync
async def test_ctrl_c_mid_reply_quits_and_frees_the_engine(
        tiny_target: Path, tiny_draft_noisy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tui.backend.stream_chat
    in_reply = threading.Event()

    def slow_after_first_round(*args, **kwargs):
        for event in real(*args, **kwargs):
            yield event
            if isinstance(event, Round) and event.index == 1:
                in_reply.set()
                threading.Event().wait(0.5)  # still "decoding" when the app shuts down

    monkeypatch.setattr(tui.backend, "stream_chat", slow_after_first_round)
    app = ChatApp(ModelSource(target=tiny_target, draft=tiny_draft_noisy),
                  ChatSettings(policy="svip", max_tokens=64, n_ctx=256, n_threads=1))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.engine is not None)
        engine = app.engine
        app.query_one(PromptInput).value = "Tell me a story."
        await pilot.press("enter")
        await until(pilot, in_reply.is_set)
        await pilot.press("ctrl+c")
    assert not app.is_running
    assert engine is not None and engine.target_ctx._closed and engine.draft_ctx._closed


@sync
async def test_a_file_that_cannot_be_attached_is_named_and_nothing_is_sent(
        tiny_target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n")
    monkeypatch.chdir(tmp_path)
    app = ChatApp(ModelSource(target=tiny_target), ChatSettings(n_ctx=256, n_threads=1))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.engine is not None)
        prompt = app.query_one(PromptInput)
        for name, reason in (("logo.png", "not UTF-8 text"), ("gone.py", "no such file")):
            prompt.value = f"What is this?\n/attach {name}"
            await pilot.press("enter")
            assert errors(app)[-1].startswith(f"cannot attach {name}: {reason}")
            assert prompt.value == f"What is this?\n/attach {name}"  # kept, to be corrected
        assert not app.conversation.messages and not app.generating


@sync
async def test_enter_in_a_settings_field_saves_and_sends_nothing(
        tiny_target: Path) -> None:
    """The settings fields are Inputs: their Submitted must not reach the chat as a message."""
    app = ChatApp(ModelSource(target=tiny_target), ChatSettings(n_ctx=256, n_threads=1))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.engine is not None)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        app.screen.query_one("#max-tokens", Input).focus()
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        await pilot.pause()
        assert not app.conversation.messages and not app.generating
        assert not app.query(UserMessage)
