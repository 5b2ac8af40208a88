"""Each widget and screen of tui/ on its own, mounted in a minimal host app and driven by Pilot.

No engine and no model: the widgets get their data the way the app hands it to them (pieces,
messages, settings, registry statuses), and the tests read what they render, the state they
keep, the messages they post and what the screens dismiss with.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from textual.content import Content
from textual.geometry import Region
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Input, Markdown, OptionList, Select, Static
from textual.widgets.markdown import MarkdownBlock

from svip_local import GenerationStats
from svip_local.conversation import Message, SavedConversation
from svip_local.registry import human_size
from tests.support.tui import BASE, Host, fake_pair_statuses, sync
from tui.config import ChatSettings
from tui.events import LiveStats
from tui.screens import ConversationsScreen, PairScreen, SettingsScreen
from tui.widgets import (
    DRAFT_STYLE,
    TARGET_STYLE,
    MessageList,
    Note,
    PromptInput,
    Reply,
    StatusBar,
    UserMessage,
)

SIZE = (80, 24)


# --- helpers ----------------------------------------------------------------------------------


def rendered(widget: Widget) -> list[str]:
    """The widget's lines as drawn on screen: border, padding and content."""
    return [strip.text.rstrip() for strip in widget.render_lines(Region(0, 0, *widget.outer_size))]


def styled_chars(content: Content) -> list[tuple[str, str]]:
    """(character, style) for each character of `content`; "" where no span styles it."""
    styles = [""] * len(content.plain)
    for span in content.spans:
        for i in range(span.start, span.end):
            styles[i] = str(span.style)
    return list(zip(content.plain, styles, strict=True))


def expected_chars(pieces: Iterable[tuple[str, bool]]) -> list[tuple[str, str]]:
    return [(c, DRAFT_STYLE if draft else TARGET_STYLE) for text, draft in pieces for c in text]


def static_text(widget: Static) -> str:
    return str(widget.content)


# --- PromptInput ---------------------------------------------------------------------------------


@sync
async def test_prompt_enter_posts_submitted_with_the_typed_text() -> None:
    prompt = PromptInput(id="prompt")
    app = Host(prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        await pilot.press(*"hi you")
        assert prompt.value == "hi you" and not app.submitted
        await pilot.press("enter")
        assert [(e.value, e.input) for e in app.submitted] == [("hi you", prompt)]
        assert prompt.value == "hi you"  # clearing it is the app's job (it may refuse to send)


@sync
async def test_prompt_shift_enter_neither_submits_nor_adds_a_line() -> None:
    prompt = PromptInput()
    app = Host(prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        await pilot.press("a", "shift+enter", "b")
        assert prompt.value == "ab" and not app.submitted


@sync
async def test_prompt_empty_enter_posts_an_empty_submission_for_the_app_to_ignore() -> None:
    """The widget does not filter: ChatApp.on_input_submitted drops blank text."""
    prompt = PromptInput()
    app = Host(prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        await pilot.press("enter")
        await pilot.press("space", "space", "enter")
        assert [e.value for e in app.submitted] == ["", "  "]
        assert not [e for e in app.submitted if e.value.strip()]


@sync
async def test_prompt_up_and_down_walk_the_history() -> None:
    prompt = PromptInput()
    app = Host(prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        for text in ("first", "second", "second", ""):  # repeats and blanks are not kept
            prompt.remember(text)
        assert prompt.history == ["first", "second"]
        seen = []
        for key in ("up", "up", "up", "down", "down", "down"):
            await pilot.press(key)
            seen.append((prompt.value, prompt.cursor_position))
        assert seen == [("second", 6), ("first", 5), ("first", 5), ("second", 6), ("", 0),
                        ("", 0)]


@sync
async def test_prompt_up_without_history_keeps_what_is_typed() -> None:
    prompt = PromptInput()
    app = Host(prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        await pilot.press(*"draft", "up", "down")
        assert prompt.value == "draft" and prompt.history == []


@sync
async def test_prompt_ctrl_e_runs_the_apps_edit_instead_of_end_of_line() -> None:
    prompt = PromptInput()
    app = Host(prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        prompt.value = "abc"
        prompt.cursor_position = 0
        await pilot.press("ctrl+e")
        assert app.edits == 1 and prompt.cursor_position == 0


# --- Reply ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shown", [True, False])
@sync
async def test_reply_streams_pieces_into_markdown_and_the_origin_view(shown: bool) -> None:
    """The origin text is rebuilt as pieces stream only while it is shown; hidden, it is
    brought up to date when shown (rebuilding it per round cost the chat's speed)."""
    reply = Reply()
    app = Host(MessageList(reply, id="messages", classes="-origin" if shown else ""))
    async with app.run_test(size=SIZE) as pilot:
        assert not reply.streaming and reply.border_title == "Assistant"
        reply.start_stream()
        assert reply.streaming
        chunks = [(("The ", True), ("quick", True)), ((" brown", False),), (),
                  (("", True),), ((" fox", True), (".", False))]
        for chunk in chunks:
            await reply.append(chunk)
        await reply.stop_stream()
        await pilot.pause()
        assert not reply.streaming
        assert reply.text == "The quick brown fox."
        assert reply.query_one(Markdown).source == "The quick brown fox."
        origin = reply.query_one(".origin", Static).content
        if not shown:
            assert origin.plain == ""
            reply.show_origin()
            origin = reply.query_one(".origin", Static).content
        assert origin.plain == "The quick brown fox."
        assert styled_chars(origin) == expected_chars(
            [("The quick", True), (" brown", False), (" fox", True), (".", False)])
        caption = reply.query_one(".caption", Static)
        assert not caption.display and static_text(caption) == ""


@sync
async def test_reply_finish_with_a_cut_text_trims_the_runs_and_shows_the_caption() -> None:
    reply = Reply()
    app = Host(MessageList(reply, id="messages"))
    async with app.run_test(size=SIZE) as pilot:
        reply.start_stream()
        await reply.append((("abc", True), ("defgh", False)))
        runs = await reply.finish("abcde", "length")  # a stop string cut the tail
        await pilot.pause()
        assert runs == ((3, True), (2, False))
        assert reply.text == "abcde" and reply.query_one(Markdown).source == "abcde"
        assert styled_chars(reply.query_one(".origin", Static).content) == expected_chars(
            [("abc", True), ("de", False)])
        caption = reply.query_one(".caption", Static)
        assert caption.display and static_text(caption) == "max tokens reached"
        assert not reply.streaming


@sync
async def test_reply_finish_with_a_flushed_tail_counts_it_as_the_targets() -> None:
    reply = Reply()
    app = Host(MessageList(reply, id="messages"))
    async with app.run_test(size=SIZE) as pilot:
        reply.start_stream()
        await reply.append((("Hi", False), (" there", True)))
        runs = await reply.finish("Hi there!!", "eos")
        await pilot.pause()
        assert runs == ((2, False), (6, True), (2, False))
        assert reply.query_one(Markdown).source == "Hi there!!"
        assert styled_chars(reply.query_one(".origin", Static).content) == expected_chars(
            [("Hi", False), (" there", True), ("!!", False)])
        assert not reply.query_one(".caption", Static).display


@pytest.mark.parametrize("finish_reason, caption", [
    ("cancelled", "stopped"), ("context", "context full"), ("length", "max tokens reached"),
    ("eos", ""), (None, ""),
])
@sync
async def test_reply_of_a_saved_message_shows_its_origin_and_caption(
        finish_reason: str | None, caption: str) -> None:
    message = Message("assistant", "Hello, world", ((5, True), (2, False)), finish_reason)
    reply = Reply(message)
    app = Host(MessageList(reply, id="messages"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert reply.text == "Hello, world" and not reply.streaming
        assert reply.query_one(Markdown).source == "Hello, world"
        # Text past the saved runs is the target's, as origin_runs counts it.
        assert styled_chars(reply.query_one(".origin", Static).content) == expected_chars(
            [("Hello", True), (", world", False)])
        shown = reply.query_one(".caption", Static)
        assert static_text(shown) == caption and shown.display == bool(caption)


@sync
async def test_the_origin_class_swaps_markdown_for_the_coloured_text() -> None:
    reply = Reply(Message("assistant", "**bold** move", ((8, True), (5, False))))
    messages = MessageList(reply, id="messages")
    app = Host(messages)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        markdown, origin = reply.query_one(Markdown), reply.query_one(".origin", Static)
        assert markdown.region.height > 0 and origin.region.height == 0
        paragraph = markdown.query_one(MarkdownBlock)  # the Markdown renders the bold
        assert rendered(paragraph) == ["bold move"]
        messages.add_class("-origin")
        await pilot.pause()
        assert markdown.region.height == 0 and origin.region.height > 0
        assert rendered(origin)[0].strip() == "**bold** move"  # the text as the model wrote it


# --- MessageList, UserMessage, Note --------------------------------------------------------------


@sync
async def test_user_message_shows_its_text_literally_under_you() -> None:
    message = UserMessage("Is [b]this[/b] bold?")
    app = Host(MessageList(message, id="messages"))
    async with app.run_test(size=SIZE):
        assert message.text == "Is [b]this[/b] bold?" and message.border_title == "You"
        lines = rendered(message)
        assert lines[0].startswith("╭─ You ─") and lines[-1].startswith("╰")
        assert lines[1].strip("│ ") == "Is [b]this[/b] bold?"


@sync
async def test_note_shows_notices_and_errors_differently() -> None:
    notice, error = Note("Stopped at [the] stop string."), Note("model file not found", error=True)
    app = Host(MessageList(notice, error, id="messages"))
    async with app.run_test(size=SIZE):
        assert not notice.has_class("-error") and error.has_class("-error")
        assert static_text(notice) == "Stopped at [the] stop string."
        assert rendered(notice)[0].strip() == "Stopped at [the] stop string."
        assert rendered(error)[0] == "█ model file not found"  # the thick left border
        assert notice.styles.color != error.styles.color


@sync
async def test_message_list_follows_new_messages_until_the_user_scrolls_away() -> None:
    messages = MessageList(id="messages")
    app = Host(messages)
    async with app.run_test(size=SIZE) as pilot:
        await messages.mount_all([Note(f"note {i}") for i in range(40)])
        await pilot.pause()
        assert messages.is_anchored and messages.max_scroll_y > 0
        assert messages.scroll_y == messages.max_scroll_y
        messages.focus()
        await pilot.press("home")
        await pilot.pause()
        await messages.mount(Note("while reading"))
        await pilot.pause()
        assert messages.scroll_y == 0  # reading older text: not pulled down
        await pilot.press("end")
        await pilot.pause()
        await messages.mount(Note("latest"))
        await pilot.pause()
        assert messages.scroll_y == messages.max_scroll_y  # back at the bottom: follows again


@sync
async def test_q_quits_from_the_message_list_but_is_a_letter_in_the_prompt() -> None:
    messages, prompt = MessageList(Note("hello"), id="messages"), PromptInput(id="prompt")
    app = Host(messages, prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        await pilot.press("q")
        assert prompt.value == "q" and app.quits == 0
        messages.focus()
        await pilot.press("q")
        assert app.quits == 1 and prompt.value == "q"


# --- StatusBar -----------------------------------------------------------------------------------


@sync
async def test_status_bar_lines() -> None:
    bar = StatusBar()
    app = Host(bar)
    async with app.run_test(size=SIZE):
        bar.policy, bar.device = "svip:0.3", "CPU 4 threads"
        bar.show_idle("tiny pair")
        assert static_text(bar) == "tiny pair │ svip:0.3 │ CPU 4 threads │ ready"
        bar.show_live(LiveStats(generated=30, rounds=8, drafted=20, accepted=15, elapsed_s=2.0))
        assert static_text(bar) == \
            "15.0 tok/s │ accept 75% (1.88/round) │ svip:0.3 │ CPU 4 threads"
        bar.show_live(LiveStats())  # nothing yet: no division by zero
        assert static_text(bar) == "0.0 tok/s │ accept 0% (0.00/round) │ svip:0.3 │ CPU 4 threads"
        stats = GenerationStats(generated=40, rounds=10, drafted=30, accepted=12, wall_s=4.0)
        bar.show_final(stats, speedup=1.75)
        assert static_text(bar) == ("10.0 tok/s │ accept 40% (1.20/round) │ 1.8× vs target alone"
                                    " │ svip:0.3 │ CPU 4 threads")
        bar.show_final(stats, speedup=None)
        assert "vs target alone" not in static_text(bar)


# --- SettingsScreen ------------------------------------------------------------------------------



def fields(screen: Screen[Any]) -> dict[str, object]:
    values: dict[str, object] = {
        name: screen.query_one(f"#{name}", Input).value
        for name in ("system", "parameter", "temperature", "max-tokens")}
    values["policy"] = screen.query_one("#policy", Select).value
    return values


def fill(screen: Screen[Any], **values: str) -> None:
    for name, value in values.items():
        if name == "policy":
            screen.query_one("#policy", Select).value = value
        else:
            screen.query_one(f"#{name.replace('_', '-')}", Input).value = value


@sync
async def test_settings_screen_shows_the_current_settings() -> None:
    app = Host(screen=SettingsScreen(BASE))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, SettingsScreen)
        assert fields(screen) == {"system": "Be brief.", "parameter": "0.5",
                                  "temperature": "0.7", "max-tokens": "64", "policy": "pmin"}
        assert static_text(screen.query_one("#settings-error", Static)) == ""


@pytest.mark.parametrize("how", ["ctrl+s", "click save", "enter in a field"])
@sync
async def test_settings_save_dismisses_with_the_parsed_settings(how: str) -> None:
    app = Host(screen=SettingsScreen(BASE))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        fill(screen, system="  Answer in French. ", policy="svip", parameter="0.4",
             temperature="1.25", max_tokens="200")
        if how == "ctrl+s":
            await pilot.press("ctrl+s")
        elif how == "click save":
            await pilot.click("#save")
        else:
            screen.query_one("#max-tokens", Input).focus()
            await pilot.press("enter")
        await pilot.pause()
        assert app.results == [ChatSettings(
            system_prompt="Answer in French.", policy="svip:0.4", temperature=1.25,
            max_tokens=200, n_ctx=1024, n_gpu_layers=0, n_threads=2)]
        assert not isinstance(app.screen, SettingsScreen)


@sync
async def test_settings_policy_without_parameter_saves_the_bare_name() -> None:
    app = Host(screen=SettingsScreen(BASE))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        fill(app.screen, policy="none", parameter="  ")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert len(app.results) == 1
        result = app.results[0]
        assert isinstance(result, ChatSettings)
        assert (result.policy, result.policy_name, result.policy_parameter) == ("none", "none", "")


@pytest.mark.parametrize("change, error", [
    ({"temperature": "hot"}, "temperature: a number >= 0, not 'hot'"),
    ({"temperature": "-0.5"}, "temperature: a number >= 0, not '-0.5'"),
    ({"max_tokens": "0"}, "max tokens: a whole number >= 1, not '0'"),
    ({"max_tokens": "12.5"}, "max tokens: a whole number >= 1, not '12.5'"),
    ({"policy": "none", "parameter": "1"}, "takes no parameter"),
    ({"policy": "svip", "parameter": "2"}, "svip threshold h must be in"),
])
@sync
async def test_settings_bad_value_shows_the_error_and_stays_open(change: dict[str, str],
                                                                error: str) -> None:
    app = Host(screen=SettingsScreen(BASE))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        fill(screen, **change)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is screen and app.results == []
        assert error in static_text(screen.query_one("#settings-error", Static))
        fill(screen, temperature="0", max_tokens="8", policy="auto", parameter="")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.results == [ChatSettings(system_prompt="Be brief.", policy="auto",
                                            temperature=0.0, max_tokens=8, n_ctx=1024,
                                            n_gpu_layers=0, n_threads=2)]


@pytest.mark.parametrize("how", ["escape", "cancel button"])
@sync
async def test_settings_cancel_dismisses_with_none(how: str) -> None:
    app = Host(screen=SettingsScreen(BASE))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        fill(app.screen, temperature="0.1")
        if how == "escape":
            await pilot.press("escape")
        else:
            app.screen.query_one("#cancel", Button).press()
        await pilot.pause()
        assert app.results == [None] and not isinstance(app.screen, SettingsScreen)


# --- ConversationsScreen -------------------------------------------------------------------------

SAVED = [
    SavedConversation(Path("newest.json"), "How do I parse TOML?", "2025-03-04T10:20:30.123456",
                      4),
    SavedConversation(Path("older.json"), "A story about a fox", "2025-01-02T03:04:05", 2),
]


@sync
async def test_conversations_screen_lists_titles_dates_and_sizes() -> None:
    app = Host(screen=ConversationsScreen(SAVED))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        options = app.screen.query_one(OptionList)
        prompts = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert prompts == ["How do I parse TOML?\n  2025-03-04 10:20 · 4 messages",
                           "A story about a fox\n  2025-01-02 03:04 · 2 messages"]


@pytest.mark.parametrize("keys, chosen", [
    (("enter",), 0), (("down", "enter"), 1), (("escape",), None),
])
@sync
async def test_conversations_screen_dismisses_with_the_chosen_one(
        keys: tuple[str, ...], chosen: int | None) -> None:
    app = Host(screen=ConversationsScreen(SAVED))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press(*keys)
        await pilot.pause()
        assert app.results == [None if chosen is None else SAVED[chosen]]


# --- PairScreen ----------------------------------------------------------------------------------


def test_fake_registry_statuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data the pair screen gets: what the registry reports after pulling one pair."""
    alpha, beta, gamma = fake_pair_statuses(tmp_path, monkeypatch)
    assert [p.name for p in (alpha, beta, gamma)] == ["alpha", "beta", "gamma"]
    assert alpha.downloaded and (alpha.target.size, alpha.draft.size) == (1500, 700)
    assert beta.target.downloaded and not beta.draft.downloaded and not beta.downloaded
    assert not gamma.target.downloaded and not gamma.draft.downloaded


@sync
async def test_pair_screen_lines_say_what_a_choice_downloads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = Host(screen=PairScreen(fake_pair_statuses(tmp_path, monkeypatch)))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        options = app.screen.query_one(OptionList)
        assert [str(options.get_option(n).prompt) for n in ("alpha", "beta", "gamma")] == [
            "alpha\n  downloaded",
            "beta\n  not downloaded: Enter downloads 900 B",  # only the missing draft
            "gamma\n  not downloaded: Enter downloads 1.6 GB",
        ]


@pytest.mark.parametrize("keys, chosen", [
    (("enter",), "alpha"), (("down", "down", "enter"), "gamma"), (("escape",), None),
])
@sync
async def test_pair_screen_dismisses_with_the_chosen_name(
        keys: tuple[str, ...], chosen: str | None, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    app = Host(screen=PairScreen(fake_pair_statuses(tmp_path, monkeypatch)))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press(*keys)
        await pilot.pause()
        assert app.results == [chosen]


def test_a_pair_whose_sizes_are_unknown_does_not_claim_zero_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    beta, gamma = fake_pair_statuses(tmp_path, monkeypatch)[1:]
    assert (beta.missing_bytes, gamma.missing_bytes) == (900, 1_600_000_000)
    unknown = replace(gamma, draft=replace(gamma.draft, size=None))
    assert unknown.missing_bytes is None and human_size(unknown.missing_bytes) == "?"
