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
from textual import events
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
from tui.speed import LIVE, MEASURED, MIN_TOKENS, Speedup, live_estimate, measured
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

FUNCTION = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))"


class PromptHost(Host):
    """Host keeping the PromptInput.Submitted messages too (Host keeps Input's)."""

    def __init__(self, *widgets: Widget) -> None:
        super().__init__(*widgets)
        self.submissions: list[PromptInput.Submitted] = []

    def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        self.submissions.append(event)


@sync
async def test_prompt_enter_posts_submitted_with_the_whole_text() -> None:
    prompt = PromptInput(id="prompt")
    app = PromptHost(prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        await pilot.press(*"hi", "ctrl+j", *"you", "shift+enter", "x")
        assert prompt.value == "hi\nyou\nx" and not app.submissions
        await pilot.press("enter")
        assert [(e.value, e.prompt, e.control) for e in app.submissions] == [
            ("hi\nyou\nx", prompt, prompt)]
        assert prompt.value == "hi\nyou\nx"  # clearing it is the app's job (it may refuse to send)


@pytest.mark.parametrize("separator", ["\n", "\r", "\r\n"])  # tmux pastes lines with \r
@sync
async def test_prompt_paste_keeps_every_line(separator: str) -> None:
    prompt = PromptInput()
    app = PromptHost(prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        await pilot.press(*"Fix this:", "ctrl+j")
        app.post_message(events.Paste(FUNCTION.replace("\n", separator)))  # bracketed paste
        await pilot.pause()
        assert prompt.value == "Fix this:\n" + FUNCTION and not app.submissions
        assert prompt.cursor_location == (4, len("print(add(1, 2))"))
        await pilot.press("enter")
        assert [e.value for e in app.submissions] == ["Fix this:\n" + FUNCTION]


@sync
async def test_prompt_empty_enter_posts_an_empty_submission_for_the_app_to_ignore() -> None:
    """The widget does not filter: ChatApp.on_prompt_input_submitted drops blank text."""
    prompt = PromptInput()
    app = PromptHost(prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        await pilot.press("enter")
        await pilot.press("space", "ctrl+j", "enter")
        assert [e.value for e in app.submissions] == ["", " \n"]


@sync
async def test_prompt_grows_with_its_lines_up_to_a_bound_then_scrolls() -> None:
    prompt = PromptInput(id="prompt")
    app = PromptHost(MessageList(id="messages"), prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        await pilot.pause()
        assert prompt.outer_size.height == 3  # one line inside its border
        prompt.value = FUNCTION
        await pilot.pause()
        assert prompt.outer_size.height == 6 and prompt.max_scroll_y == 0
        prompt.value = "\n".join(f"line {i}" for i in range(20))
        await pilot.pause()
        assert prompt.outer_size.height == 10  # 8 lines: the rest scrolls
        assert prompt.max_scroll_y == 12 and prompt.scroll_y == 12  # the cursor's end shown
        assert app.query_one(MessageList).outer_size.height == SIZE[1] - 10


@sync
async def test_prompt_up_and_down_walk_the_history_from_the_first_and_last_line() -> None:
    prompt = PromptInput()
    app = PromptHost(prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        for text in ("first", FUNCTION, FUNCTION, ""):  # repeats and blanks are not kept
            prompt.remember(text)
        assert prompt.sent == ["first", FUNCTION]
        await pilot.press(*"draft")
        seen = []
        for key in ("up", "up", "up", "up", "up", "up", "down", "down", "down", "down"):
            await pilot.press(key)
            seen.append((prompt.value, prompt.cursor_location))
        last = (3, len("print(add(1, 2))"))
        assert seen == [
            (FUNCTION, last),  # the whole message, the cursor at its end
            (FUNCTION, (2, 0)), (FUNCTION, (1, 16)), (FUNCTION, (0, 14)),  # up its lines
            ("first", (0, 5)), ("first", (0, 5)),  # the oldest: up stays
            (FUNCTION, last),  # down from the last line: the next message
            ("draft", (0, 5)), ("draft", (0, 5)),  # back to what was being typed
            ("draft", (0, 5)),
        ]


@sync
async def test_prompt_up_and_down_move_within_a_message_and_select_with_shift() -> None:
    prompt = PromptInput()
    app = PromptHost(prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        prompt.remember("older")
        prompt.value = "one\ntwo"
        await pilot.press("up")
        assert prompt.value == "one\ntwo" and prompt.cursor_location == (0, 3)
        await pilot.press("shift+down")
        assert prompt.value == "one\ntwo" and prompt.selected_text == "\ntwo"
        await pilot.press("shift+up", "up")  # selecting never walks the history
        assert prompt.value == "older"


@sync
async def test_prompt_up_without_history_keeps_what_is_typed() -> None:
    prompt = PromptInput()
    app = PromptHost(prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        await pilot.press(*"draft", "up", "down")
        assert prompt.value == "draft" and prompt.sent == []


@sync
async def test_prompt_ctrl_e_runs_the_apps_edit_instead_of_end_of_line() -> None:
    prompt = PromptInput()
    app = PromptHost(prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        prompt.value = "abc"
        prompt.move_cursor((0, 0))
        await pilot.press("ctrl+e")
        assert app.edits == 1 and prompt.cursor_location == (0, 0)


@sync
async def test_prompt_keys_for_the_footer() -> None:
    prompt = PromptInput()
    app = PromptHost(prompt)
    async with app.run_test(size=SIZE) as pilot:
        prompt.focus()
        await pilot.pause()
        shown = {(b.key, b.key_display, b.description)
                 for _, b, _, _ in app.screen.active_bindings.values() if b.show}
        assert shown == {("ctrl+j", "^j", "Newline"), ("shift+enter", "^j", "Newline"),
                         ("ctrl+e", None, "Edit")}


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
            "15.0 tok/s │ svip:0.3 │ accept 75% (1.88/round) │ CPU 4 threads"
        bar.show_live(LiveStats())  # nothing yet: no division by zero
        assert static_text(bar) == "0.0 tok/s │ svip:0.3 │ accept 0% (0.00/round) │ CPU 4 threads"
        stats = GenerationStats(generated=40, rounds=10, drafted=30, accepted=12, wall_s=4.0)
        speedup = Speedup(1.75, "measured", "how it was added up")
        bar.show_final(stats, speedup)
        # The comparison and its source first: at 80 columns the line is cut on the right.
        assert static_text(bar) == ("10.0 tok/s │ ≈1.8× vs target alone (measured) │ svip:0.3"
                                    " │ accept 40% (1.20/round) │ CPU 4 threads")
        assert bar.tooltip == "how it was added up"
        bar.show_final(stats, None)
        assert "vs target alone" not in static_text(bar) and bar.tooltip is None
        bar.show_final(stats, speedup)
        bar.show_live(LiveStats())  # the next reply: the last one's explanation goes
        assert bar.tooltip is None


# --- the speedup's sums ----------------------------------------------------------------------


def reply_stats(**fields: Any) -> GenerationStats:
    """A 100-token reply: 0.5 s prefill, 2 s drafting and verifying, 0.1 s bookkeeping."""
    values: dict[str, Any] = dict(generated=100, rounds=40, prefill_s=0.5, draft_s=0.8,
                                  verify_s=1.2, wall_s=2.6)
    return GenerationStats(**{**values, **fields})


def test_measured_speedup_is_the_target_alones_time_for_the_same_reply() -> None:
    speedup = measured(reply_stats(), seconds_per_token=0.05)
    assert speedup is not None and speedup.source == MEASURED
    # The same prefill, then 100 tokens at 50 ms: 5.5 s against 2.6 s.
    assert speedup.ratio == pytest.approx(5.5 / 2.6)
    assert speedup.label == "≈2.1× vs target alone (measured)"
    assert speedup.detail == ("Target alone ≈ 0.50 s prefill + 100 tokens × 50.0 ms per token, "
                              "the target alone timed right after this reply at its context "
                              "= 5.50 s; this reply took 2.60 s.")


def test_auto_priced_by_its_live_estimate_counts_the_same_bookkeeping_on_both_sides() -> None:
    live = {"choice": "lookup", "verify_1_s": 0.03}
    speedup = live_estimate(reply_stats(live=live))
    assert speedup is not None and speedup.source == LIVE
    assert speedup.ratio == pytest.approx((0.5 + 100 * 0.03 + 0.1) / 2.6)
    assert speedup.label == "≈1.4× vs target alone (auto's estimate)"
    assert "30.0 ms per target decode, auto's live estimate" in speedup.detail
    # Every round the target alone's (auto chose it throughout): 1×, not less.
    alone = reply_stats(rounds=100, draft_s=0.0, verify_s=3.0, wall_s=3.6,
                        live={"choice": "none", "verify_1_s": 0.03})
    speedup = live_estimate(alone)
    assert speedup is not None and speedup.ratio == pytest.approx(1.0)


@pytest.mark.parametrize("stats, per_token_s", [
    (reply_stats(generated=MIN_TOKENS - 1), 0.05),  # too short to tell
    (reply_stats(), 0.0),  # no timing
    (reply_stats(wall_s=0.0), 0.05),
])
def test_no_speedup_from_too_little(stats: GenerationStats, per_token_s: float) -> None:
    assert measured(stats, per_token_s) is None
    assert live_estimate(replace(stats, live={"verify_1_s": per_token_s})) is None


def test_no_live_estimate_without_auto() -> None:
    assert live_estimate(reply_stats()) is None
    assert live_estimate(reply_stats(live={"choice": "draft"})) is None
    assert measured(reply_stats(generated=MIN_TOKENS), 0.05) is not None


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
