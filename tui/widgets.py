"""The chat's widgets: messages, the streaming reply, the prompt with history, the status bar."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message as TextualMessage
from textual.widgets import Markdown, Static, TextArea
from textual.widgets.markdown import MarkdownStream

from svip_local import GenerationStats
from svip_local.conversation import Message, OriginRuns, origin_runs
from tui.events import LiveStats
from tui.speed import Speedup

DRAFT_STYLE = "bold $success"
TARGET_STYLE = "$warning"


class MessageList(VerticalScroll):
    """The conversation, kept scrolled to the newest text unless the user scrolls away.

    With the `-origin` class, replies show their text coloured by origin instead of Markdown.
    """

    # Here rather than on the app: "q" must stay a letter in the prompt and in dialogs.
    BINDINGS = [Binding("q", "app.quit", "Quit", show=False)]

    def on_mount(self) -> None:
        self.anchor()


class UserMessage(Static):
    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False)
        self.text = text
        self.border_title = "You"


class Note(Static):
    """A notice or an error, in the flow of the conversation."""

    def __init__(self, text: str, *, error: bool = False) -> None:
        super().__init__(text, markup=False, classes="-error" if error else "")


class Reply(Vertical):
    """One assistant reply: Markdown while reading, text coloured by origin on demand.

    While streaming, text arrives through a MarkdownStream (it batches fragments the renderer
    cannot keep up with); the origin view is rebuilt from the pieces only while it is shown
    (`show_origin` brings it up to date when it is switched on).
    """

    def __init__(self, message: Message | None = None) -> None:
        super().__init__()
        self.border_title = "Assistant"
        self.text = message.content if message else ""
        self._pieces: list[tuple[str, bool]] = _pieces_from_runs(
            message.content, message.origin) if message else []
        self._finish = message.finish_reason if message else None
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Markdown(self.text)
        yield Static(self._origin_content(), classes="origin")
        caption = Static(_caption(self._finish), classes="caption")
        caption.display = bool(_caption(self._finish))
        yield caption

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    def start_stream(self) -> None:
        self._stream = Markdown.get_stream(self.query_one(Markdown))

    async def append(self, pieces: tuple[tuple[str, bool], ...]) -> None:
        text = "".join(p for p, _ in pieces)
        if not text:
            return
        self.text += text
        self._pieces.extend(pieces)
        if self.parent is not None and self.parent.has_class("-origin"):
            self.show_origin()
        if self._stream is not None:
            await self._stream.write(text)

    async def stop_stream(self) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None

    async def finish(self, text: str, finish_reason: str) -> OriginRuns:
        """End the stream with the engine's final text; returns the origin runs to save."""
        await self.stop_stream()
        runs = origin_runs(self._pieces, len(text))
        if text != self.text:  # a flushed tail, or a stop string cut off
            self.text = text
            await self.query_one(Markdown).update(text)
        self._pieces = _pieces_from_runs(text, runs)
        self._finish = finish_reason
        self.query_one(".origin", Static).update(self._origin_content())
        caption = self.query_one(".caption", Static)
        caption.update(_caption(finish_reason))
        caption.display = bool(_caption(finish_reason))
        return runs

    def show_origin(self) -> None:
        self.query_one(".origin", Static).update(self._origin_content())

    def _origin_content(self) -> Content:
        return Content.assemble(
            *((text, DRAFT_STYLE if draft else TARGET_STYLE) for text, draft in self._pieces))


def _pieces_from_runs(text: str, runs: OriginRuns) -> list[tuple[str, bool]]:
    pieces, start = [], 0
    for n, draft in runs:
        pieces.append((text[start:start + n], draft))
        start += n
    if start < len(text):
        pieces.append((text[start:], False))
    return pieces


def _caption(finish_reason: str | None) -> str:
    return {"cancelled": "stopped", "length": "max tokens reached",
            "context": "context full"}.get(finish_reason or "", "")


class PromptInput(TextArea):
    """The message box: Enter sends, Shift+Enter or Ctrl+J starts a new line, a paste keeps
    every line; Up on the first line and Down on the last walk through what was sent before.

    It grows with its text up to the height its style allows, then scrolls.
    """

    BINDINGS = [
        Binding("ctrl+j,shift+enter", "newline", "Newline", key_display="^j"),
        Binding("ctrl+e", "app.edit_last", "Edit"),  # instead of TextArea's "end of line"
    ]

    @dataclass
    class Submitted(TextualMessage):
        """Enter was pressed: `value` is the whole text (the app decides whether to send)."""

        prompt: PromptInput
        value: str

        @property
        def control(self) -> PromptInput:
            return self.prompt

    def __init__(self, *, placeholder: str = "", id: str | None = None) -> None:
        super().__init__(placeholder=placeholder, id=id, highlight_cursor_line=False)
        self.sent: list[str] = []  # `history` is TextArea's undo record
        self._index = 0
        self._draft = ""  # what was typed before walking into `sent`

    @property
    def value(self) -> str:
        return self.text

    @value.setter
    def value(self, text: str) -> None:
        """Replace the text, the cursor at its end (where typing goes on)."""
        self.text = text
        self.move_cursor(self.document.end)

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()  # not TextArea's newline
            self.post_message(self.Submitted(self, self.text))

    def action_newline(self) -> None:
        self.replace("\n", *self.selection, maintain_selection_offset=False)  # as typed

    def remember(self, text: str) -> None:
        if text and (not self.sent or self.sent[-1] != text):
            self.sent.append(text)
        self._index = len(self.sent)

    def action_cursor_up(self, select: bool = False) -> None:
        if select or not self.sent or not self.navigator.is_first_wrapped_line(
                self.cursor_location):
            super().action_cursor_up(select)
        else:
            self._walk(-1)

    def action_cursor_down(self, select: bool = False) -> None:
        if select or not self.sent or not self.navigator.is_last_wrapped_line(
                self.cursor_location):
            super().action_cursor_down(select)
        else:
            self._walk(1)

    def _walk(self, step: int) -> None:
        index = max(0, min(len(self.sent), self._index + step))
        if index == self._index:
            return
        if self._index == len(self.sent):
            self._draft = self.text
        self._index = index
        self.value = self.sent[index] if index < len(self.sent) else self._draft


class StatusBar(Static):
    """One line: speed, the speedup once known (hovered: how it was worked out), policy,
    acceptance, device."""

    def __init__(self) -> None:
        super().__init__("", id="status", markup=False)
        self.policy = ""
        self.device = ""

    def show_idle(self, label: str) -> None:
        self.tooltip = None
        self.update(f"{label} │ {self.policy} │ {self.device} │ ready")

    def show_live(self, live: LiveStats) -> None:
        rate = live.generated / live.elapsed_s if live.elapsed_s > 0 else 0.0
        acc = live.accepted / live.drafted if live.drafted else 0.0
        mal = live.accepted / live.rounds if live.rounds else 0.0
        self.tooltip = None
        self.update(self._line(rate, acc, mal))

    def show_final(self, stats: GenerationStats, speedup: Speedup | None) -> None:
        self.tooltip = speedup.detail if speedup is not None else None
        self.update(self._line(stats.tokens_per_second, stats.acceptance_rate,
                               stats.mean_accepted_length, speedup))

    def _line(self, rate: float, acceptance: float, accepted_per_round: float,
              speedup: Speedup | None = None) -> str:
        # Most telling first: a narrow terminal cuts the line from the right. The comparison
        # and its source, then what ran (`auto` says what this reply ran), then how it went.
        parts = [f"{rate:.1f} tok/s", self.policy,
                 f"accept {acceptance:.0%} ({accepted_per_round:.2f}/round)", self.device]
        if speedup is not None:
            parts.insert(1, speedup.label)
        return " │ ".join(parts)
