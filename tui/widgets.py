"""The chat's widgets: messages, the streaming reply, the prompt with history, the status bar."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import Input, Markdown, Static
from textual.widgets.markdown import MarkdownStream

from svip_local import GenerationStats
from svip_local.conversation import Message, OriginRuns, origin_runs
from tui.events import LiveStats

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


class PromptInput(Input):
    """The message box; Up and Down walk through what was sent before."""

    BINDINGS = [
        Binding("up", "history(-1)", "Previous", show=False),
        Binding("down", "history(1)", "Next", show=False),
        Binding("ctrl+e", "app.edit_last", "Edit"),  # instead of Input's "end of line"
    ]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.history: list[str] = []
        self._index = 0

    def remember(self, text: str) -> None:
        if text and (not self.history or self.history[-1] != text):
            self.history.append(text)
        self._index = len(self.history)

    def action_history(self, step: int) -> None:
        if not self.history:
            return
        self._index = max(0, min(len(self.history), self._index + step))
        self.value = self.history[self._index] if self._index < len(self.history) else ""
        self.cursor_position = len(self.value)


class StatusBar(Static):
    """One line: speed and where it comes from, policy, device, and the speedup once known."""

    def __init__(self) -> None:
        super().__init__("", id="status", markup=False)
        self.policy = ""
        self.device = ""

    def show_idle(self, label: str) -> None:
        self.update(f"{label} │ {self.policy} │ {self.device} │ ready")

    def show_live(self, live: LiveStats) -> None:
        rate = live.generated / live.elapsed_s if live.elapsed_s > 0 else 0.0
        acc = live.accepted / live.drafted if live.drafted else 0.0
        mal = live.accepted / live.rounds if live.rounds else 0.0
        self.update(self._line(rate, acc, mal, speedup=None))

    def show_final(self, stats: GenerationStats, speedup: float | None) -> None:
        self.update(self._line(stats.tokens_per_second, stats.acceptance_rate,
                               stats.mean_accepted_length, speedup))

    def _line(self, rate: float, acceptance: float, accepted_per_round: float,
              speedup: float | None) -> str:
        # Most telling first: a narrow terminal cuts the line from the right.
        parts = [f"{rate:.1f} tok/s", f"accept {acceptance:.0%} ({accepted_per_round:.2f}/round)"]
        if speedup is not None:
            parts.append(f"{speedup:.1f}× vs target alone")
        return " │ ".join([*parts, self.policy, self.device])
