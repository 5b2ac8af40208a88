"""Choosing a pair that is not downloaded: the app pulls it (from a fake hub on 127.0.0.1) with a
progress bar, loads it and chats."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import OptionList

from tests.support.registry_fakes import FakeHub, hf_source, isolate, pair_toml
from tests.support.tui import send, sync, until
from tui.app import ChatApp
from tui.config import ChatSettings
from tui.events import PullProgress
from tui.screens import PairScreen


class RecordingApp(ChatApp):
    """Keeps every progress report it shows."""

    progress: list[tuple[str, int, int]]

    def on_pull_progress(self, msg: PullProgress) -> None:
        self.progress.append((msg.label, msg.done, msg.total))
        super().on_pull_progress(msg)


@sync
async def test_choosing_a_missing_pair_pulls_it_with_progress_then_chats(
        tiny_target: Path, tiny_draft_noisy: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    dirs = isolate(tmp_path, monkeypatch)
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add("org/tiny-GGUF", "t.gguf", tiny_target.read_bytes())
        hub.add("org/tiny-draft-GGUF", "d.gguf", tiny_draft_noisy.read_bytes())
        dirs.user_file.write_text(pair_toml(
            "tiny", ("t.gguf", [hf_source("org/tiny-GGUF", "t.gguf")]),
            ("d.gguf", [hf_source("org/tiny-draft-GGUF", "d.gguf")])))
        app = RecordingApp(None, ChatSettings(policy="svip", max_tokens=8, n_threads=1))
        app.progress = []
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, PairScreen))
            options = app.screen.query_one(OptionList)
            assert "not downloaded" in str(options.get_option("tiny").prompt)
            options.highlighted = options.get_option_index("tiny")
            await pilot.press("enter")
            await until(pilot, lambda: app.engine is not None)
            assert hub.downloads()
            labels = {label for label, _, _ in app.progress}
            assert any(label.startswith("target") for label in labels)
            assert any(total and done == total for _, done, total in app.progress)
            assert not app.query_one("#loading").display
            await send(pilot, "Hello there.")
            assert app.conversation.messages[-1].role == "assistant"
            assert app.conversation.messages[-1].content
