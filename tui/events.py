"""Messages the worker threads post to the app: the only way they talk to the UI.

`post_message` is thread-safe and never blocks, so a worker keeps decoding while the UI
catches up, and a worker that outlives the app (quit mid-reply) posts into nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from svip_local import Done, Engine, GenerationStats
    from svip_local.chat import ChatTemplate


@dataclass
class LiveStats:
    """Counters of the reply in progress (the final `Done.stats` replaces them)."""

    generated: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    elapsed_s: float = 0.0


class PullProgress(Message):
    def __init__(self, label: str, done: int, total: int) -> None:
        super().__init__()
        self.label, self.done, self.total = label, done, total


class EngineReady(Message):
    def __init__(self, engine: Engine, template: ChatTemplate, label: str) -> None:
        super().__init__()
        self.engine, self.template, self.label = engine, template, label


class EngineFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class ReplyChunk(Message):
    """The tokens of one draft-and-verify round, as (text, from_draft) pieces."""

    def __init__(self, pieces: tuple[tuple[str, bool], ...], live: LiveStats) -> None:
        super().__init__()
        self.pieces, self.live = pieces, live


class ReplyNotice(Message):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ReplyDone(Message):
    def __init__(self, done: Done) -> None:
        super().__init__()
        self.done = done


class ReplyFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class TargetTimed(Message):
    """The target alone's seconds per token on `engine`, timed right after the reply whose
    `stats` these are, at the context that reply ended at."""

    def __init__(self, engine: Engine, stats: GenerationStats, seconds_per_token: float) -> None:
        super().__init__()
        self.engine, self.stats, self.seconds_per_token = engine, stats, seconds_per_token


class LogRecordPosted(Message):
    """A warning from svip_local's logging (the terminal belongs to the app)."""

    def __init__(self, text: str, error: bool) -> None:
        super().__init__()
        self.text, self.error = text, error
