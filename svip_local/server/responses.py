"""Response objects of the OpenAI API (chat and text completions), plus `timings` and `svip`.

Streaming sends `chat.completion.chunk` / `text_completion` objects as server-sent events; the
chunk carrying `finish_reason` also carries `svip`, the speculative statistics of the
generation, which OpenAI clients keep as an extra attribute and otherwise ignore. `timings` is
llama-server's per-request object (what tools written for llama.cpp read), on the whole
response, or on a stream's last chunk (the usage chunk, else the finish chunk). Tool calls
stream as OpenAI streams them: a call's first chunk names it (index, id, type, name, empty
arguments), the chunks after carry only its index and argument fragments.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from svip_local import Done, GenerationStats, ToolCall, ToolCallDelta

# The engine's reasons in OpenAI's vocabulary. "cancelled" only reaches a stream that is still
# connected when the server shuts down mid-generation (a non-streamed reply cut so is a 503).
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length",
                  "cancelled": "stop", "tool_calls": "tool_calls"}
_STATS_LISTS = ("draft_lengths", "accepted_lengths", "node_counts", "from_draft")


def usage(stats: GenerationStats) -> dict[str, int]:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated,
            "total_tokens": stats.prompt_tokens + stats.generated}


def timings(stats: GenerationStats, queued_s: float = 0.0) -> dict[str, Any]:
    """llama-server's `timings`: the prompt's share (only the tokens decoded: `cache_n` came
    from the KV cache), the reply's, the draft's, and our `queued_ms`: the wait for a slot
    (`queued_s` in the server's queue plus the engine's own)."""
    prompt_ms = 1000 * stats.prefill_s
    predicted_ms = 1000 * max(0.0, stats.wall_s - stats.prefill_s)
    return {"cache_n": stats.prompt_tokens - stats.prefill_tokens,
            "prompt_n": stats.prefill_tokens, "prompt_ms": prompt_ms,
            "prompt_per_token_ms": _per(prompt_ms, stats.prefill_tokens),
            "prompt_per_second": _per(1000 * stats.prefill_tokens, prompt_ms),
            "predicted_n": stats.generated, "predicted_ms": predicted_ms,
            "predicted_per_token_ms": _per(predicted_ms, stats.generated),
            "predicted_per_second": _per(1000 * stats.generated, predicted_ms),
            "draft_n": stats.drafted, "draft_n_accepted": stats.accepted,
            "queued_ms": 1000 * (queued_s + stats.queued_s)}


def _per(amount: float, count: float) -> float:
    """A rate that is 0 rather than infinite or NaN (neither is valid JSON) for no count."""
    return amount / count if count > 0 else 0.0


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

    def tool_call_start(self, index: int, call_id: str, name: str) -> dict[str, Any]:
        """A call's first chunk: everything but its arguments."""
        return self._chunk({"tool_calls": [
            {"index": index, "id": call_id, "type": "function",
             "function": {"name": name, "arguments": ""}}]})

    def tool_call_arguments(self, index: int, fragment: str) -> dict[str, Any]:
        return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})

    def closing(self, done: Done, notices: list[str], *, include_usage: bool,
                queued_s: float = 0.0) -> list[dict[str, Any]]:
        """The finish chunk (with `svip`), then the usage chunk when the client asked for it;
        the last of them carries `timings` (`queued_s`: the wait in the server's queue)."""
        last = self._chunk({} if self.chat else "", FINISH_REASONS[done.finish_reason])
        last["svip"] = svip_stats(done.stats, notices)
        chunks = [last]
        if include_usage:
            chunks.append({**self._envelope(), "choices": [], "usage": usage(done.stats)})
        chunks[-1]["timings"] = timings(done.stats, queued_s)
        return chunks

    def complete(self, done: Done, notices: list[str], *,
                 queued_s: float = 0.0) -> dict[str, Any]:
        """The whole non-streaming response (`queued_s`: the wait in the server's queue)."""
        choice: dict[str, Any] = {"index": 0, "logprobs": None,
                                  "finish_reason": FINISH_REASONS[done.finish_reason]}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": done.text, "refusal": None}
            if done.tool_calls:
                choice["message"]["content"] = done.text or None
                choice["message"]["tool_calls"] = [tool_call(c) for c in done.tool_calls]
        else:
            choice["text"] = done.text
        return {**self._envelope(streaming=False), "choices": [choice],
                "usage": usage(done.stats), "timings": timings(done.stats, queued_s),
                "svip": svip_stats(done.stats, notices)}

    def _envelope(self, *, streaming: bool = True) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if streaming else "chat.completion") if self.chat \
            else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _chunk(self, delta: dict[str, Any] | str,
               finish_reason: str | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
        if self.chat:
            choice["delta"] = delta
        else:
            choice["text"] = delta
        return {**self._envelope(), "choices": [choice]}


class ToolCallChunks:
    """A stream's tool-call chunks: each call announced once, its arguments sent once.

    Calls arrive as `ToolCallDelta`s while their tokens are accepted, then as a `ToolCall` (and
    again in `Done.tool_calls`); the closing events send only what the deltas did not.
    """

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.sent: dict[int, str] = {}  # arguments sent so far, by call index

    def chunks(self, event: ToolCallDelta | ToolCall) -> list[dict[str, Any]]:
        i = event.index
        out = self._start(i, event.id or "", event.name or "")
        whole = self.sent[i] + event.arguments if isinstance(event, ToolCallDelta) \
            else event.arguments
        return out + self._arguments(i, whole)

    def _start(self, index: int, call_id: str, name: str) -> list[dict[str, Any]]:
        if index in self.sent:
            return []
        self.sent[index] = ""
        return [self.reply.tool_call_start(index, call_id, name)]

    def _arguments(self, index: int, arguments: str) -> list[dict[str, Any]]:
        """The fragment that brings the call's sent arguments up to `arguments`."""
        sent = self.sent[index]
        if arguments == sent or not arguments.startswith(sent):
            return []  # nothing new (a sent fragment cannot be taken back)
        self.sent[index] = arguments
        return [self.reply.tool_call_arguments(index, arguments[len(sent):])]


def tool_call(call: ToolCall) -> dict[str, Any]:
    """A finished call as a non-streamed message lists it."""
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}
