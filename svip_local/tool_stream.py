"""A reply's tokens split into content and tool calls, as they are accepted.

Text that may begin a call is held back, like a partial stop string: the syntax's trigger
(`<tool_call>`), or for Qwen2.5's Hermes syntax also a fenced JSON block whose "name" is one
of the tools. Inside a call the name is read once its header is complete (the first
`ToolCallDelta` carries the id and name), then each new piece of the arguments is a delta,
holding back what may be the start of the call's end. A call's tokens are never `Token`
content; `Done` carries the calls and says "tool_calls".
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from svip_local.events import Done, Event, Token, ToolCall, ToolCallDelta
from svip_local.stops import StopMatcher
from svip_local.tools import FENCE_ARGUMENTS, FENCE_CLOSE, FENCE_OPEN, WS, CallSyntax


class Ending(Protocol):
    """Finds where a call's arguments end in streamed text: (text safe to pass on, None), or
    (the text before the end, the text after it)."""

    def push(self, piece: str) -> tuple[str, str | None]: ...


class Marker:
    """A literal end (`}\n</tool_call>`), found as a stop string is: the tail that may begin
    it is held back."""

    def __init__(self, marker: str) -> None:
        self._stop = StopMatcher([marker])

    def push(self, piece: str) -> tuple[str, str | None]:
        text = self._stop.push(piece)
        return text, (None if self._stop.hit is None else self._stop.rest)


class FenceEnd:
    """The end of a fenced call: `}` and the closing fence, whitespace around them."""

    _close = re.compile(FENCE_CLOSE)
    _maybe = re.compile(WS + r"(?:\}" + WS + "`{0,2})?$")

    def __init__(self) -> None:
        self._held = ""

    def push(self, piece: str) -> tuple[str, str | None]:
        text = self._held + piece
        found = self._close.search(text)
        if found is not None:
            self._held = ""
            return text[: found.start()], text[found.end():]
        cut = self._maybe.search(text)
        at = cut.start() if cut is not None else len(text)
        self._held = text[at:]
        return text[:at], None


def _prefix_pattern(parts: Sequence[tuple[str, Sequence[str]]]) -> str:
    """A regex matching every prefix of the texts `parts` spell: ("lit", [s]), ("ws", []),
    ("opt", [s]) or ("alt", names), in order."""
    if not parts:
        return ""
    (kind, values), rest = parts[0], parts[1:]
    if kind == "ws":
        return WS + _prefix_pattern(rest)
    if kind == "opt":
        return f"(?:{_prefix_pattern([('lit', values), *rest])}|{_prefix_pattern(rest)})"
    if kind == "alt":
        return "(?:" + "|".join(_prefix_pattern([("lit", [v]), *rest]) for v in values) + ")"
    word = values[0]
    partial = "|".join(re.escape(word[:k]) for k in range(len(word)))
    return f"(?:{partial}|{re.escape(word)}{_prefix_pattern(rest)})"


class Opening:
    """Finds where a call starts in content: the trigger, or a fenced block naming a tool.
    `push` returns (content safe to show, None) or (content before the call, (the name when
    the opening gave it, else None; the text after the opening))."""

    def __init__(self, syntax: CallSyntax, names: Sequence[str]) -> None:
        self.trigger = syntax.trigger
        self.held = ""
        self._fence = self._fence_partial = None
        if syntax.fenced and names:
            alternatives = "|".join(re.escape(n) for n in names)
            self._fence = re.compile(FENCE_OPEN + f'({alternatives})"')
            self._fence_partial = re.compile(_prefix_pattern([
                ("lit", ["```"]), ("opt", ["json"]), ("lit", ["\n"]), ("ws", []), ("lit", ["{"]),
                ("ws", []), ("lit", ['"name"']), ("ws", []), ("lit", [":"]), ("ws", []),
                ("lit", ['"']), ("alt", list(names)), ("lit", ['"'])]))

    def push(self, piece: str) -> tuple[str, tuple[str | None, str] | None]:
        text = self.held + piece
        starts = {self.trigger[0]} | ({"`"} if self._fence is not None else set())
        for at, char in enumerate(text):
            if char not in starts:
                continue
            tail = text[at:]
            if tail.startswith(self.trigger):
                self.held = ""
                return text[:at], (None, tail[len(self.trigger):])
            if self.trigger.startswith(tail):
                self.held = tail
                return text[:at], None
            if self._fence is not None and self._fence_partial is not None:
                opened = self._fence.match(tail)
                if opened is not None:
                    self.held = ""
                    return text[:at], (opened.group(1), tail[opened.end():])
                if self._fence_partial.fullmatch(tail):
                    self.held = tail
                    return text[:at], None
        self.held = ""
        return text, None


class ToolCallStream:
    """Rewrites one generation's events for a reply that may call tools (`syntax`; `names`:
    the tools a call may name, which a fenced block must name to be a call)."""

    def __init__(self, syntax: CallSyntax, names: Sequence[str] = ()) -> None:
        self.syntax, self.names = syntax, tuple(names)
        self._header = re.compile(re.escape(syntax.head) + r'([^"]*)' + re.escape(syntax.middle))
        self._fence_arguments = re.compile(FENCE_ARGUMENTS + r"(?=\S)")
        self._opening = Opening(syntax, names)
        self._end: Ending = Marker(syntax.end)
        self._content: list[str] = []
        self._calls: list[ToolCall] = []
        self._call: str | None = None  # an open call's text before its arguments
        self._fenced = False
        self._id = self._name = ""
        self._args: list[str] = []
        self._blank = ""  # whitespace after a call, held until text follows
        self._tail = ""  # a Llama 3.x call's held-back closing brace

    def fresh(self) -> ToolCallStream:
        """A new stream for the same syntax and tools (one per generation)."""
        return ToolCallStream(self.syntax, self.names)

    def events(self, events: Iterable[Event]) -> Iterator[Event]:
        for event in events:
            if isinstance(event, Token):
                yield from self._token(event)
            elif isinstance(event, Done):
                yield from self._done(event)
            else:
                yield event

    def _token(self, token: Token) -> Iterator[Event]:
        piece = token.text
        while piece:
            if self._call is None and not self._id:  # in content
                text, opened = self._opening.push(piece)
                if self._calls:  # blank lines between and after calls are not content
                    text, self._blank = self._blank + text, ""
                    if not text.strip():
                        text, self._blank = "", text
                if text:
                    self._content.append(text)
                    yield dataclasses.replace(token, text=text)
                if opened is None:
                    return
                name, piece = opened
                self._call, self._fenced = "", name is not None
                if name is not None:  # a fenced block: the name came with the opening
                    yield self._open(name, FenceEnd())
            elif self._call is not None:  # in a call's header
                self._call += piece
                header = (self._fence_arguments if self._fenced else self._header).match(
                    self._call)
                if header is None:
                    return
                if not self._fenced:
                    yield self._open(header.group(1), Marker(self.syntax.end))
                piece, self._call = self._call[header.end():], None
            else:  # in its arguments
                if self.syntax.until_end:
                    text, rest = self._hold_last_brace(piece), None
                else:
                    text, rest = self._end.push(piece)
                if text:
                    self._args.append(text)
                    yield ToolCallDelta(len(self._calls), None, None, text)
                if rest is None:
                    return
                yield self._close()
                piece = rest

    def _open(self, name: str, end: Ending) -> ToolCallDelta:
        self._id, self._name, self._end = f"call_{secrets.token_hex(12)}", name, end
        return ToolCallDelta(len(self._calls), self._id, name, "")

    def _hold_last_brace(self, piece: str) -> str:
        """Llama 3.x calls end with the reply: the last `}` closes the call, not the
        arguments, so it is held back until more text follows."""
        text = self._tail + piece
        keep = len(text) - len(text.rstrip()) + 1 if text.rstrip().endswith("}") else 0
        self._tail = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def _close(self) -> ToolCall:
        call = ToolCall(len(self._calls), self._id, self._name, "".join(self._args))
        self._calls.append(call)
        self._id = self._name = ""
        self._args = []
        return call

    def _done(self, done: Done) -> Iterator[Event]:
        if self._id and self._call is None and self.syntax.until_end \
                and done.finish_reason in ("eos", "stop"):
            yield self._close()  # the reply ended the call
        elif self._call is None and not self._id:
            held, self._opening.held = self._opening.held, ""
            if held:
                self._content.append(held)
        finish = done.finish_reason
        if self._calls and finish in ("eos", "stop"):
            finish = "tool_calls"
        yield dataclasses.replace(done, text="".join(self._content), finish_reason=finish,
                                  tool_calls=tuple(self._calls))
