"""Response objects of the OpenAI API (chat and text completions), plus our `svip` field.

Streaming sends `chat.completion.chunk` / `text_completion` objects as server-sent events; the
chunk carrying `finish_reason` also carries `svip`, the speculative statistics of the
generation, which OpenAI clients keep as an extra attribute and otherwise ignore.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from svip_local import Done, GenerationStats

# The engine's reasons in OpenAI's vocabulary. "cancelled" only reaches a client that is still
# connected when the server shuts down mid-generation.
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length",
                  "cancelled": "stop"}
_STATS_LISTS = ("draft_lengths", "accepted_lengths", "from_draft")


def usage(stats: GenerationStats) -> dict[str, int]:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated,
            "total_tokens": stats.prompt_tokens + stats.generated}


def svip_stats(stats: GenerationStats, notices: list[str]) -> dict[str, Any]:
    """The scalar statistics (per-round and per-token lists would grow with the reply), and
    the engine's notices (e.g. old turns dropped to fit the context) when there are any."""
    data = {k: v for k, v in stats.to_dict().items() if k not in _STATS_LISTS}
    data["tokens_from_draft"] = sum(stats.from_draft)
    if notices:
        data["notices"] = notices
    return data


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event; OpenAI's stream ends with the literal `[DONE]`."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


@dataclass(frozen=True)
class Reply:
    """Shapes one request's output as chat (`chat=True`) or text-completion objects."""

    chat: bool
    model: str
    id: str
    created: int

    @classmethod
    def new(cls, *, chat: bool, model: str) -> Reply:
        prefix = "chatcmpl" if chat else "cmpl"
        return cls(chat, model, f"{prefix}-{uuid.uuid4().hex}", int(time.time()))

    def opening(self) -> dict[str, Any] | None:
        """The first chunk: chat streams announce the assistant role before any text."""
        return self._chunk({"role": "assistant", "content": ""}) if self.chat else None

    def delta(self, text: str) -> dict[str, Any]:
        return self._chunk({"content": text} if self.chat else text)

    def closing(self, done: Done, notices: list[str], *,
                include_usage: bool) -> list[dict[str, Any]]:
        """The finish chunk (with `svip`), then the usage chunk when the client asked for it."""
        last = self._chunk({} if self.chat else "", FINISH_REASONS[done.finish_reason])
        last["svip"] = svip_stats(done.stats, notices)
        if not include_usage:
            return [last]
        return [last, {**self._envelope(), "choices": [], "usage": usage(done.stats)}]

    def complete(self, done: Done, notices: list[str]) -> dict[str, Any]:
        """The whole non-streaming response."""
        choice: dict[str, Any] = {"index": 0, "logprobs": None,
                                  "finish_reason": FINISH_REASONS[done.finish_reason]}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": done.text, "refusal": None}
        else:
            choice["text"] = done.text
        return {**self._envelope(streaming=False), "choices": [choice],
                "usage": usage(done.stats), "svip": svip_stats(done.stats, notices)}

    def _envelope(self, *, streaming: bool = True) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if streaming else "chat.completion") if self.chat \
            else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _chunk(self, delta: dict[str, str] | str,
               finish_reason: str | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
        if self.chat:
            choice["delta"] = delta
        else:
            choice["text"] = delta
        return {**self._envelope(), "choices": [choice]}
