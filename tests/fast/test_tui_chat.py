"""The chat app driven through Textual's Pilot, on tiny generated models at 80x24."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from textual import events
from textual.widgets import Markdown, Static

import tui.backend
from svip_local.conversation import Conversation, list_saved
from svip_local.events import Round
from tests.support.tui import send, sync, until
from tui.app import ChatApp, message_text
from tui.config import ChatSettings, ModelSource
from tui.screens import ConversationsScreen
from tui.speed import LIVE, MEASURED, MIN_TOKENS, measured
from tui.widgets import (
    DRAFT_STYLE,
    TARGET_STYLE,
    MessageList,
    PromptInput,
    Reply,
    StatusBar,
    UserMessage,
)

SETTINGS = ChatSettings(policy="svip", max_tokens=40, n_ctx=512, n_threads=1)


@pytest.fixture
def app(tiny_target: Path, tiny_draft_noisy: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> ChatApp:
    monkeypatch.setenv("SVIP_LOCAL_DATA_DIR", str(tmp_path))  # this test's saved chats only
    return ChatApp(ModelSource(target=tiny_target, draft=tiny_draft_noisy), SETTINGS)


def status_text(app: ChatApp) -> str:
    return str(app.query_one("#status", Static).content)


@sync
async def test_a_reply_streams_in_with_live_stats(app: ChatApp) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await send(pilot, "Tell me about the fox.")
        reply = app.query(Reply).last()
        assert [str(u.content) for u in app.query(UserMessage)] == ["Tell me about the fox."]
        assert reply.text and reply.text == app.conversation.messages[-1].content
        assert reply.query_one(Markdown).source == reply.text
        assert "tok/s" in status_text(app) and "accept" in status_text(app)
        assert "svip:0.3" in status_text(app) and "CPU" in status_text(app)
        # The target alone is timed right after the reply; then the comparison appears.
        await until(pilot, lambda: app.speedup is not None)
        assert app.speedup is not None and app.speedup.source == MEASURED
        assert app.speedup.label in status_text(app) and app.speedup.ratio > 0
        assert app.query_one(StatusBar).tooltip == app.speedup.detail
        assert list_saved()[0].title == "Tell me about the fox."


@sync
async def test_esc_mid_reply_keeps_the_partial_reply_and_the_next_turn_works(
        app: ChatApp, monkeypatch: pytest.MonkeyPatch) -> None:
    # Hold the generation after its first round until the test has pressed Esc.
    gate = threading.Event()
    real = tui.backend.stream_chat

    def held_after_first_round(*args, **kwargs):
        for event in real(*args, **kwargs):
            yield event
            if isinstance(event, Round) and event.index == 1:
                gate.wait(10)

    monkeypatch.setattr(tui.backend, "stream_chat", held_after_first_round)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.engine is not None)
        app.query_one(PromptInput).value = "Tell me a long story."
        await pilot.press("enter")
        await until(pilot, lambda: app.query(Reply) and app.query(Reply).last().text)
        partial = app.query(Reply).last().text
        await pilot.press("escape")
        gate.set()
        await until(pilot, lambda: not app.generating)
        reply = app.conversation.messages[-1]
        assert reply.finish_reason == "cancelled" and reply.content == partial
        assert str(app.query(Reply).last().query_one(".caption", Static).content) == "stopped"
        engine = app.engine
        assert engine is not None
        assert engine.kv_lengths() == (len(engine.target_ctx.tokens),
                                       len(engine.draft_ctx.tokens))
        monkeypatch.setattr(tui.backend, "stream_chat", real)
        await send(pilot, "And then?")
        assert app.conversation.messages[-1].finish_reason in ("eos", "length")
        assert len(app.conversation.messages) == 4
        assert app.conversation.messages[1].content == partial


@sync
async def test_origin_toggle_colours_replies_by_who_wrote_them(app: ChatApp) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await send(pilot, "Tell me about the fox.")
        reply = app.query(Reply).last()
        origin = reply.query_one(".origin", Static)
        assert not origin.display or not app.query_one(MessageList).has_class("-origin")
        await pilot.press("ctrl+t")
        assert app.query_one(MessageList).has_class("-origin")
        assert app.query_one("#legend").display
        await pilot.pause()
        assert origin.region.height > 0 and reply.query_one(Markdown).region.height == 0
        content = origin.content
        assert content.plain == reply.text
        styles = {str(span.style) for span in content.spans}
        runs = app.conversation.messages[-1].origin
        assert {d for _, d in runs} == {True, False}  # the noisy draft is right only partly
        assert styles == {DRAFT_STYLE, TARGET_STYLE}
        drafted = sum(n for n, d in runs if d)
        assert drafted == sum(s.end - s.start for s in content.spans
                              if str(s.style) == DRAFT_STYLE)
        await pilot.press("ctrl+t")
        assert not app.query_one(MessageList).has_class("-origin")


@sync
async def test_save_reopen_regenerate_and_edit(app: ChatApp) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await send(pilot, "First question.")
        first = app.conversation
        await app.action_new_chat()
        assert not app.query(Reply) and app.conversation.id != first.id
        await send(pilot, "Second question.")
        await until(pilot, lambda: len(list_saved()) == 2)

        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, ConversationsScreen))
        await pilot.press("down", "enter")  # the older one: newest first
        await until(pilot, lambda: app.conversation.id == first.id)
        assert app.conversation == Conversation.load(list_saved()[1].path)
        assert [str(u.content) for u in app.query(UserMessage)] == ["First question."]
        assert app.query(Reply).last().text == first.messages[-1].content

        await pilot.press("ctrl+r")
        await until(pilot, lambda: not app.generating)
        assert len(app.query(Reply)) == 1 and len(app.conversation.messages) == 2

        await pilot.press("ctrl+e")
        prompt = app.query_one(PromptInput)
        assert prompt.value == "First question."
        prompt.value = "Edited question."
        await pilot.press("enter")
        await until(pilot, lambda: not app.generating)
        assert [m.content for m in app.conversation.messages][0] == "Edited question."
        assert len(app.conversation.messages) == 2
        assert [str(u.content) for u in app.query(UserMessage)] == ["Edited question."]


def test_the_reply_worker_posts_at_most_one_chunk_per_update_interval(
        tiny_target: Path, tiny_draft_noisy: Path) -> None:
    """Rounds of a fast engine are posted together: the UI redraws once per
    UPDATE_INTERVAL_S, not once per round, and nothing is lost on the way."""
    from svip_local import Done, Engine
    from svip_local.chat import ChatTemplate
    from tui.backend import UPDATE_INTERVAL_S, ReplyJob, run_reply
    from tui.events import ReplyChunk, ReplyDone

    settings = ChatSettings(policy="constant:2", max_tokens=300, n_ctx=512, n_threads=1)
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1) as engine:
        job = ReplyJob(engine, ChatTemplate.for_engine(engine), engine.make_policy("constant:2"),
                       [{"role": "user", "content": "Tell me about the fox."}], settings,
                       threading.Event(), time_target=False)
        posted: list[object] = []
        run_reply(job, posted.append)
    chunks = [m for m in posted if isinstance(m, ReplyChunk)]
    done = posted[-1]
    assert isinstance(done, ReplyDone) and isinstance(done.done, Done)
    stats = done.done.stats
    assert "".join(t for c in chunks for t, _ in c.pieces) == done.done.text
    assert chunks[-1].live.generated == stats.generated and stats.rounds > 20
    assert len(chunks) <= stats.wall_s / UPDATE_INTERVAL_S + 2 < stats.rounds


@sync
async def test_every_reply_is_compared_with_the_target_alone_at_its_own_context(
        app: ChatApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target alone is timed after each reply, where that reply ended (no longer once per
    engine), and the ratio is that reply's time against the target alone's for its tokens."""
    contexts: list[int] = []

    def timed(engine, tokens=8, cancel=None):
        contexts.append(len(engine.target_ctx.tokens))
        return 50.0  # tok/s: 20 ms a token

    monkeypatch.setattr(tui.backend, "measure_target_alone", timed)
    async with app.run_test(size=(80, 24)) as pilot:
        for text in ("Tell me about the fox.", "And the dog?"):
            await send(pilot, text)
            await until(pilot, lambda: len(contexts) == len(app.conversation.messages) // 2)
            await until(pilot, lambda: app.speedup is not None)
            stats = app.last_stats
            assert stats is not None and stats.generated >= MIN_TOKENS
            assert app.speedup == measured(stats, 1 / 50.0)
            assert app.speedup.label in status_text(app)
        assert contexts[0] < contexts[1]  # each timed at the context its reply reached


@sync
async def test_auto_is_compared_by_its_own_live_estimate_without_timing(
        tiny_target: Path, tiny_draft_noisy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tui.backend, "measure_target_alone", lambda *a, **k: pytest.fail(
        "auto's replies need no timing"))
    app = ChatApp(ModelSource(target=tiny_target, draft=tiny_draft_noisy),
                  ChatSettings(policy="auto", max_tokens=40, n_ctx=512, n_threads=1))
    async with app.run_test(size=(80, 24)) as pilot:
        await send(pilot, "Tell me about the fox.")
        stats = app.last_stats
        assert stats is not None and stats.live is not None
        assert app.speedup is not None and app.speedup.source == LIVE
        assert f"{app.speedup.label} │ {stats.policy} │ accept" in status_text(app)
        assert stats.policy.startswith("auto → ")  # what auto ran, still shown


@sync
async def test_a_pasted_function_is_sent_whole_and_history_keeps_it(app: ChatApp) -> None:
    function = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))"
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.engine is not None)
        prompt = app.query_one(PromptInput)
        prompt.focus()
        await pilot.press(*"Fix:", "ctrl+j")
        app.post_message(events.Paste(function.replace("\n", "\r")))  # as tmux pastes it
        await pilot.pause()
        await pilot.press("enter")
        await until(pilot, lambda: not app.generating)
        sent = "Fix:\n" + function
        assert app.conversation.messages[0].content == sent
        assert [str(u.content) for u in app.query(UserMessage)] == [sent]
        assert prompt.value == ""
        await pilot.press("up")
        assert prompt.value == sent


@sync
async def test_attach_puts_the_file_in_the_prompt_and_enter_then_sends_it(
        app: ChatApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "add.py").write_text("def add(a, b):\n    return a - b\n")
    monkeypatch.chdir(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.engine is not None)
        prompt = app.query_one(PromptInput)
        prompt.focus()
        prompt.value = "Why is this wrong?\n/attach add.py"
        await pilot.press("enter")
        expected = ("Why is this wrong?\n`add.py`:\n```py\ndef add(a, b):\n    return a - b\n```")
        assert prompt.value == expected and not app.conversation.messages  # shown, not sent
        await pilot.press("enter")
        await until(pilot, lambda: not app.generating)
        assert app.conversation.messages[0].content == expected


@sync
async def test_the_footer_shows_every_key_at_80_columns(app: ChatApp) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.engine is not None)
        await pilot.pause()
        keys = app.screen.query("FooterKey")  # Textual's footer entries (the class is private)
        shown = [(k.key_display, k.description) for k in keys  # type: ignore[attr-defined]
                 if k.region.right <= 80]
        assert shown == [("^e", "Edit"), ("^j", "Newline"), ("esc", "Stop"), ("^n", "New"),
                         ("^r", "Retry"), ("^t", "Origin"), ("^o", "Open"), ("^s", "Setup"),
                         ("^l", "Models")]


@pytest.mark.parametrize("value, sent", [
    ("Hello there.  \n", "Hello there."),
    ("\n  \n    return a + b\n  y = 1\n\n", "    return a + b\n  y = 1"),  # code keeps its indent
    (" \n\t\n", ""),  # nothing to send
])
def test_the_message_is_the_prompt_without_blank_lines_around_it(value: str, sent: str) -> None:
    assert message_text(value) == sent


@sync
async def test_a_new_message_or_quitting_stops_the_timing_of_the_target_alone(
        app: ChatApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """The timing holds the engine between replies: the next reply and closing the app must
    not wait for it."""
    started = threading.Semaphore(0)
    stopped: list[bool] = []

    def slow(engine, tokens=8, cancel=None):
        started.release()
        stopped.append(cancel.wait(10))  # True: told to stop; False: ran its whole 10 s
        return None

    monkeypatch.setattr(tui.backend, "measure_target_alone", slow)
    async with app.run_test(size=(80, 24)) as pilot:
        await send(pilot, "Tell me about the fox.")
        await until(pilot, lambda: started.acquire(blocking=False))
        await send(pilot, "And the dog?")  # waits for the engine, which the timing gives up
        assert stopped == [True] and len(app.conversation.messages) == 4
        await until(pilot, lambda: started.acquire(blocking=False))
    assert stopped == [True, True]  # closing the app stopped the second one
