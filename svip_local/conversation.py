"""A chat conversation: its messages, new/regenerate/edit, and JSON files in the data dir.

The engine needs nothing from here (`stream_chat` takes plain messages); this is the state a
chat application keeps and saves. Files live in $SVIP_LOCAL_DATA_DIR/conversations, else
platformdirs' user data dir for "svip-local", one `<id>.json` per conversation.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from svip_local.errors import InvalidRequestError, SvipError

DATA_DIR_ENV = "SVIP_LOCAL_DATA_DIR"
FORMAT = 1  # the "format" field of saved files; bumped when the layout changes
TITLE_CHARS = 60

OriginRuns = tuple[tuple[int, bool], ...]
"""A reply's text as runs of (characters, from_draft): which parts accepted draft tokens wrote
and which the target wrote itself."""


class ConversationFileError(SvipError, ValueError):
    """A saved conversation is unreadable or not in a format this version knows."""


def conversations_dir() -> Path:
    base = os.environ.get(DATA_DIR_ENV)
    if not base:
        import platformdirs

        base = platformdirs.user_data_dir("svip-local")
    return Path(base) / "conversations"


def origin_runs(pieces: Iterable[tuple[str, bool]], total_chars: int) -> OriginRuns:
    """Merge streamed (text, from_draft) pieces into runs covering `total_chars` characters.

    Text the stream never attributed (held-back bytes flushed at the end) counts as the
    target's, and the runs are cut to `total_chars` (a stop string removes a tail).
    """
    runs: list[list[Any]] = []
    left = total_chars
    for text, from_draft in pieces:
        n = min(len(text), left)
        if n == 0:
            continue
        left -= n
        if runs and runs[-1][1] == from_draft:
            runs[-1][0] += n
        else:
            runs.append([n, from_draft])
    if left:
        if runs and not runs[-1][1]:
            runs[-1][0] += left
        else:
            runs.append([left, False])
    return tuple((n, d) for n, d in runs)


@dataclass
class Message:
    """One message. Replies keep where their text came from and why they ended."""

    role: str
    content: str
    origin: OriginRuns = ()
    finish_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.origin:
            data["origin"] = [[n, d] for n, d in self.origin]
        if self.finish_reason:
            data["finish_reason"] = self.finish_reason
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        return cls(role=str(data["role"]), content=str(data["content"]),
                   origin=tuple((int(n), bool(d)) for n, d in data.get("origin", ())),
                   finish_reason=data.get("finish_reason"))


def _new_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


@dataclass
class Conversation:
    """Messages after an optional system prompt, with the edits a chat UI offers."""

    system_prompt: str = ""
    messages: list[Message] = field(default_factory=list)
    id: str = field(default_factory=_new_id)
    created: str = field(default_factory=lambda: datetime.now().isoformat(timespec="seconds"))

    @property
    def title(self) -> str:
        first = next((m.content for m in self.messages if m.role == "user"), "")
        line = " ".join(first.split())
        return (line[: TITLE_CHARS - 1] + "…" if len(line) > TITLE_CHARS else line) or "(empty)"

    def prompt(self) -> list[dict[str, str]]:
        """The messages for `stream_chat`: the system prompt (if any), then the turns."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": m.role, "content": m.content} for m in self.messages]

    def add_user(self, text: str) -> None:
        self.messages.append(Message("user", text))

    def add_reply(self, text: str, origin: OriginRuns = (), finish_reason: str | None = None
                  ) -> None:
        self.messages.append(Message("assistant", text, origin, finish_reason))

    def regenerate(self) -> None:
        """Drop the last reply so the same question can be answered again."""
        if not self.messages or self.messages[-1].role != "assistant":
            raise InvalidRequestError("there is no reply to regenerate")
        self.messages.pop()

    def last_user_text(self) -> str:
        for m in reversed(self.messages):
            if m.role == "user":
                return m.content
        raise InvalidRequestError("there is no message to edit")

    def edit_last_user(self, text: str) -> None:
        """Replace the last user message (and drop the replies after it) with `text`."""
        self.last_user_text()  # raises when there is none
        last = max(i for i, m in enumerate(self.messages) if m.role == "user")
        del self.messages[last:]
        self.add_user(text)

    # -- files --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "id": self.id, "title": self.title, "created": self.created,
                "updated": datetime.now().isoformat(timespec="microseconds"),  # orders saves
                "system_prompt": self.system_prompt,
                "messages": [m.to_json() for m in self.messages]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Conversation:
        if data.get("format") != FORMAT:
            raise ConversationFileError(f"unknown conversation format {data.get('format')!r}")
        return cls(system_prompt=str(data.get("system_prompt", "")),
                   messages=[Message.from_json(m) for m in data["messages"]],
                   id=str(data["id"]), created=str(data["created"]))

    def save(self, directory: Path | None = None) -> Path:
        """Write `<id>.json` (through a temporary file, so a crash never leaves half a file)."""
        folder = directory or conversations_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.id}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=1), "utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> Conversation:
        try:
            return cls.from_json(json.loads(path.read_text("utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConversationFileError(f"cannot read conversation {path}: {exc}") from exc


@dataclass(frozen=True)
class SavedConversation:
    path: Path
    title: str
    updated: str
    n_messages: int


def list_saved(directory: Path | None = None) -> list[SavedConversation]:
    """Saved conversations, most recently updated first; unreadable files are skipped."""
    folder = directory or conversations_dir()
    found = []
    for path in folder.glob("*.json") if folder.is_dir() else ():
        try:
            data = json.loads(path.read_text("utf-8"))
            found.append(SavedConversation(path, str(data["title"]), str(data["updated"]),
                                           len(data["messages"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(found, key=lambda c: c.updated, reverse=True)
