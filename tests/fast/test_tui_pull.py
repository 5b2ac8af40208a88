"""Choosing a pair that is not downloaded: the app pulls it (from a fake hub on 127.0.0.1) with a
progress bar, loads it and chats."""

from __future__ import annotations

from textual.widgets import OptionList

from tests.support.registry_fakes import FakeHub
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
        tiny_pair_on_hub: FakeHub) -> None:
    hub = tiny_pair_on_hub
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
