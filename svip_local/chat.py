"""Chat on the engine: messages -> the model's own chat template -> token ids -> `generate`.

    for event in stream_chat(engine, [{"role": "user", "content": "Hi"}], max_tokens=256):
        ...  # the same Token / Round / Done events as Engine.generate, maybe a Notice first

Nothing here keeps state between turns: the engine's target context knows exactly which tokens
its KV cache holds, and `prompt_ids` reuses them wherever their text still matches the new
prompt. So the next turn decodes only its new tokens, and a regenerated or edited turn trims
both caches back to the common prefix (the engine does the sequence removal).
"""

from __future__ import annotations

import bisect
import codecs
import functools
import itertools
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import numpy as np

from svip_local.constraint import Constraint
from svip_local.engine import Engine, PolicyLike, check_max_tokens
from svip_local.errors import InvalidRequestError, PromptTooLongError
from svip_local.events import Event, GenerationStats, Notice
from svip_local.messages import Messages, plain_tool_messages, validate_messages
from svip_local.native import (
    Model,
    apply_builtin_chat_template,
    render_chat_template,
    supports_gpu_offload,
)
from svip_local.off_loop import iterate_off_loop
from svip_local.sampling import SamplingParams
from svip_local.tool_stream import ToolCallStream
from svip_local.tools import (
    CallSyntax,
    Tool,
    choose_tools,
    detect_syntax,
    parse_tools,
    response_format_constraint,
    tool_constraint,
)
from svip_local.transcript import ROLE_SOURCES

FALLBACK_TEMPLATE = "chatml"  # what llama.cpp itself uses for a GGUF without a template
_PROBE = "svip-probe-reply"  # assistant content no template alters (no spaces to trim)


@dataclass(frozen=True)
class ChatTemplate:
    """How one model wants a conversation written out.

    `jinja` is the GGUF's own `tokenizer.chat_template`, rendered as llama-cpp-python does;
    `builtin` names (or, given a template text, lets llama.cpp detect) one of llama.cpp's C++
    templates, used when the GGUF has no template or its Jinja does not compile.
    """

    source: str  # for people: "gguf", or "builtin..." with the name or the reason
    jinja: str | None = None
    builtin: str | None = None
    bos_token: str = ""
    eos_token: str = ""

    @classmethod
    def for_engine(cls, engine: Engine) -> ChatTemplate:
        """The template the engine's configuration names (the pair's setting)."""
        return cls.for_model(engine.target_model, engine.config.chat_template)

    @classmethod
    def for_model(cls, model: Model, preference: str = "gguf") -> ChatTemplate:
        """The model's own template ("gguf") or a llama.cpp built-in by name ("chatml", ...)."""
        if preference != "gguf":
            try:
                return cls._builtin(preference, f"builtin:{preference}")
            except InvalidRequestError as exc:
                raise InvalidRequestError(f"unknown chat template {preference!r}") from exc
        text = model.chat_template()
        if text is None:
            return cls._builtin(FALLBACK_TEMPLATE, f"builtin:{FALLBACK_TEMPLATE} (GGUF has none)")
        tmpl = cls("gguf", jinja=text, bos_token=_special_text(model, model.special.bos),
                   eos_token=_special_text(model, model.special.eos))
        try:
            tmpl.render([{"role": "user", "content": "hello"}])
            return tmpl
        except InvalidRequestError:
            pass
        # Jinja this sandbox cannot run: llama.cpp recognises most templates by their text.
        try:
            return cls._builtin(text, "builtin (detected from the GGUF's template)")
        except InvalidRequestError:
            return cls._builtin(FALLBACK_TEMPLATE,
                                f"builtin:{FALLBACK_TEMPLATE} (GGUF's template unusable)")

    @classmethod
    def _builtin(cls, name: str, source: str) -> ChatTemplate:
        tmpl = cls(source, builtin=name)
        tmpl.render([{"role": "user", "content": "hello"}])  # unknown names fail here
        return tmpl

    def render(self, messages: Messages, *, add_generation_prompt: bool = True,
               tools: Sequence[Tool] = ()) -> str:
        """The prompt text; a template that rejects the conversation raises InvalidRequestError.
        `tools` reach a template that takes them (`call_syntax().in_template`), and messages
        may carry `tool_calls` (arguments as objects) and `tool_call_id` for it."""
        try:
            if self.jinja is not None:
                extra = {"tools": [t.as_openai() for t in tools]} if tools else {}
                return render_chat_template(self.jinja, [dict(m) for m in messages],
                                            bos_token=self.bos_token, eos_token=self.eos_token,
                                            add_generation_prompt=add_generation_prompt,
                                            **extra)
            assert self.builtin is not None
            plain = [{"role": m["role"], "content": m["content"] or ""} for m in messages]
            return apply_builtin_chat_template(self.builtin, plain,
                                               add_generation_prompt=add_generation_prompt)
        except (jinja2.TemplateError, ValueError, TypeError) as exc:
            raise InvalidRequestError(f"the chat template failed: {exc}") from exc

    def call_syntax(self) -> CallSyntax:
        """How this template's model writes a tool call."""
        return detect_syntax(self.jinja)

    @functools.cached_property
    def end_of_turn(self) -> str:
        """The text the template writes after a reply (e.g. `<|im_end|>`), or "" if none.

        Generation already ends at llama.cpp's end-of-generation tokens (its vocabulary loader
        counts <|im_end|>, <|eot_id|>, <end_of_turn>... among them); this marker is also used
        as a stop string for a model that spells it out in plain-text tokens.
        """
        probe = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": _PROBE}]
        try:
            text = self.render(probe, add_generation_prompt=False)
        except InvalidRequestError:
            return ""
        tail = text.partition(_PROBE)[2].split()
        return tail[0] if tail else ""


def _special_token(model: Model, text: str) -> int | None:
    """The id of the one special token `text` is in this vocabulary (`<tool_call>` in
    Qwen2.5's), or None when it is ordinary text. A `<...>` token of its own counts, as in
    llguidance, which masks such tokens unless a grammar names them."""
    ids = model.tokenize(text, add_special=False, parse_special=True)
    if len(ids) == 1 and text.startswith("<") and text.endswith(">") \
            and model.token_text(ids[0]) == text.encode():
        return ids[0]
    return None


def _special_text(model: Model, token: int) -> str:
    return model.token_text(token).decode("utf-8", errors="replace") if token >= 0 else ""


def _token_bytes(model: Model, token: int) -> bytes:
    # Control tokens have no visible piece; in a rendered prompt they appear as their text.
    return model.piece(token) or model.token_text(token)


def prompt_ids(engine: Engine, text: str) -> list[int]:
    """Token ids for a rendered prompt, taken from the target's cache while its tokens spell it.

    Re-tokenizing a whole conversation would not reproduce the reply's generated tokens (a
    model may write "t"+"he" where the tokenizer says "the"), and every token after the first
    difference would be decoded again. Instead the cached tokens are decoded the way the
    engine decoded the reply (UTF-8, invalid bytes replaced) while they spell the text, and
    only the rest is tokenized; the cut falls where no UTF-8 character is left half done.
    Which cached tokens the ids share, and so what is decoded, the engine works out itself.
    """
    model = engine.target_model
    special = model.special
    head = [special.bos] if special.add_bos and special.bos >= 0 \
        and not text.startswith(_special_text(model, special.bos)) else []
    # The slot whose tokens spell most of the text: the engine gives the request that slot.
    cached, n_keep, pos = [], len(head), 0
    for tokens in engine.cached_prompts():
        n, at = _spelled(model, tokens, text, head)
        if at > pos:
            cached, n_keep, pos = tokens, n, at
    rest = text[pos:]
    return head + cached[len(head):n_keep] + (
        model.tokenize(rest, add_special=False, parse_special=True) if rest else [])


def _spelled(model: Model, cached: list[int], text: str, head: list[int]) -> tuple[int, int]:
    """How many of `cached` tokens spell the start of `text`, and how many characters they
    spell (cut where no UTF-8 character is left half done)."""
    n_keep, pos = len(head), 0
    if cached[:len(head)] == head:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        end = 0
        for i in range(len(head), len(cached)):
            piece = decoder.decode(_token_bytes(model, cached[i]))
            if not text.startswith(piece, end):
                break
            end += len(piece)
            if not decoder.getstate()[0]:
                n_keep, pos = i + 1, end
    return n_keep, pos


@dataclass(frozen=True)
class FittedPrompt:
    """A conversation as prompt ids: `regions` says where each kept message starts (token
    index, role), `dropped` how many old turns were left out to fit the context."""

    ids: list[int]
    regions: list[tuple[int, str]]
    dropped: int


def message_regions(engine: Engine, text: str, messages: Messages, ids: Sequence[int]
                    ) -> list[tuple[int, str]]:
    """Where each message's content starts in `ids` (the tokens of the rendered `text`),
    with its role: copies from the user's pasted text and from an earlier reply are told
    apart by it. A message whose content the template rewrote is left out."""
    model = engine.target_model
    ends = np.cumsum([len(_token_bytes(model, t)) for t in ids])
    # A BOS the tokenizer added (not in the text) shifts every byte offset by its length.
    shift = 0
    special = model.special
    if ids and ids[0] == special.bos >= 0 and not text.startswith(
            _special_text(model, special.bos)):
        shift = len(_token_bytes(model, special.bos))
    regions, pos = [], 0
    for m in messages:
        at = text.find(m["content"], pos) if m["content"] and m["role"] in ROLE_SOURCES else -1
        if at < 0:
            continue
        byte = shift + len(text[:at].encode("utf-8"))
        regions.append((int(np.searchsorted(ends, byte, side="right")), m["role"]))
        pos = at + len(m["content"])
    return regions


def fit_messages(engine: Engine, template: ChatTemplate, messages: Messages, max_tokens: int,
                 tools: Sequence[Tool] = ()) -> FittedPrompt:
    """Prompt ids that leave room for the reply, where each kept message starts, and how
    many old turns were dropped for it.

    A turn is a user message and what follows it up to the next one. Leading system messages
    and the last turn are always kept. The reply gets `max_tokens` of room, but at most half
    the context, so a huge max_tokens does not throw the whole history away.
    """
    msgs = validate_messages(messages)
    limit = engine.n_ctx - min(max_tokens, engine.n_ctx // 2)
    n_sys = next(i for i, m in enumerate(msgs) if m["role"] != "system")
    starts = [i for i, m in enumerate(msgs) if m["role"] == "user" and i >= n_sys]
    # A reply written before the first user message belongs to the first turn.
    turns = [msgs[a:b] for a, b in zip([n_sys, *starts[1:]], [*starts[1:], len(msgs)],
                                       strict=True)]

    def kept(dropped: int) -> list[dict[str, Any]]:
        return msgs[:n_sys] + [m for turn in turns[dropped:] for m in turn]

    @functools.cache
    def text(dropped: int) -> str:
        return template.render(kept(dropped), tools=tools)

    @functools.cache
    def ids_without(dropped: int) -> list[int]:
        return prompt_ids(engine, text(dropped))

    def fitted(dropped: int) -> FittedPrompt:
        ids = ids_without(dropped)
        return FittedPrompt(ids, message_regions(engine, text(dropped), kept(dropped), ids),
                            dropped)

    if len(ids_without(0)) <= limit:
        return fitted(0)
    dropped = bisect.bisect_left(range(len(turns)), True, lo=1,
                                 key=lambda k: len(ids_without(k)) <= limit)
    if dropped == len(turns):
        alone = len(ids_without(len(turns) - 1))
        raise PromptTooLongError(
            f"the context is full: the last message (with the system prompt) takes {alone} "
            f"tokens, and only {limit} of the context's {engine.n_ctx} are left once "
            f"{engine.n_ctx - limit} are kept for the reply; shorten the message, lower "
            "max tokens or raise n_ctx")
    return fitted(dropped)


@dataclass
class ToolRequest:
    """A chat request made ready for tools: the messages the template renders (calls and
    results written as text where it takes no tools), the tools it renders itself, the
    constraint (the tool grammar, or the request's own), and the stream that reads calls
    back out of the reply (None when no call can come)."""

    messages: list[dict[str, Any]]
    tools: list[Tool]
    constraint: Constraint | None
    calls: ToolCallStream | None


def tool_request(engine: Engine, template: ChatTemplate, messages: Messages,
                 tools: Sequence[Mapping[str, Any]] | None = None,
                 tool_choice: str | Mapping[str, Any] = "auto", parallel_tool_calls: bool = True,
                 constraint: Constraint | None = None) -> ToolRequest:
    """`messages`, `tools` and `tool_choice` checked and turned into what the template and
    the engine take; bad input raises InvalidRequestError (or ConstraintError) naming it."""
    msgs = validate_messages(messages)
    listed = parse_tools(tools) if tools else []
    if not listed and tool_choice == "auto":
        return ToolRequest(msgs, [], constraint, None)
    mode, callable_tools = choose_tools(listed, tool_choice)
    if constraint is not None and mode != "none":
        raise InvalidRequestError(
            f"a response_format or grammar cannot be combined with tool calls (tool_choice "
            f"{tool_choice!r}): pass tool_choice \"none\", or leave the format out")
    syntax = template.call_syntax()
    calls = None
    if constraint is None and listed:
        constraint = tool_constraint(syntax, callable_tools, mode, parallel_tool_calls,
                                     functools.partial(_special_token, engine.target_model))
        if mode != "none":
            calls = ToolCallStream(syntax, [t.name for t in callable_tools])
    if not syntax.in_template:
        return ToolRequest(plain_tool_messages(msgs, syntax, listed), [], constraint, calls)
    return ToolRequest(msgs, listed, constraint, calls)


def stream_chat(engine: Engine, messages: Messages, *, max_tokens: int = 512,
                sampling: SamplingParams | None = None,
                policy: PolicyLike | None = None,
                cancel: threading.Event | None = None, stop: Sequence[str] = (),
                template: ChatTemplate | None = None,
                tools: Sequence[Mapping[str, Any]] | None = None,
                tool_choice: str | Mapping[str, Any] = "auto", parallel_tool_calls: bool = True,
                response_format: Mapping[str, Any] | None = None,
                constraint: Constraint | None = None) -> Iterator[Event]:
    """Stream a reply to `messages` ({role, content} dicts ending with the user's or tool
    results).

    Yields what `Engine.generate` yields, preceded by a `Notice` when old turns had to be
    dropped to fit the context. Bad input and a message too long for the context raise here,
    before any work. `template` defaults to the engine's (resolved on each call: pass one
    from `ChatTemplate.for_engine` to skip that). `tools`, `tool_choice`,
    `parallel_tool_calls` and `response_format` are OpenAI's; with tools, a call's tokens
    come as `ToolCallDelta` / `ToolCall` events instead of `Token` content. `constraint`:
    what the reply must match (or `response_format`, not both).
    """
    check_max_tokens(max_tokens)  # before fitting, which leaves room for the reply
    template = template or ChatTemplate.for_engine(engine)
    formatted = response_format_constraint(response_format)
    if formatted is not None and constraint is not None:
        raise InvalidRequestError("give a response_format or a constraint (grammar), not both")
    request = tool_request(engine, template, messages, tools, tool_choice,
                           parallel_tool_calls, constraint or formatted)
    fitted = fit_messages(engine, template, request.messages, max_tokens, request.tools)
    dropped = fitted.dropped
    eot = template.end_of_turn
    constraint = request.constraint
    stops = [*([eot] if eot and (constraint is None or constraint.lazy) else []), *stop]
    events: Iterator[Event] = engine.generate(
        fitted.ids, max_tokens=max_tokens, sampling=sampling, policy=policy, stop=stops,
        cancel=cancel, regions=fitted.regions, constraint=constraint)
    if request.calls is not None:
        events = request.calls.events(events)
    if not dropped:
        return events
    turns = "turn" if dropped == 1 else "turns"
    notice = Notice(f"The conversation outgrew the context ({engine.n_ctx} tokens): the oldest "
                    f"{dropped} {turns} are left out of the prompt (the system prompt is kept).")
    return itertools.chain([notice], events)


# -- what a chat UI shows next to the reply ------------------------------------------------------


async def astream_chat(engine: Engine, messages: Messages, **kwargs: Any
                       ) -> AsyncIterator[Event]:
    """`stream_chat` for asyncio: the same events and arguments, the blocking work off the
    event loop. Cancelling the task that iterates it cancels the reply (and returns once
    the engine's slot is consistent)."""
    cancel = kwargs.pop("cancel", None) or threading.Event()
    events = stream_chat(engine, messages, cancel=cancel, **kwargs)
    async for event in iterate_off_loop(events, cancel.set):
        yield event


def decode_rate(stats: GenerationStats) -> float:
    """Generated tokens per second of decoding, prompt prefill excluded (tok/s)."""
    decode_s = stats.wall_s - stats.prefill_s
    return stats.generated / decode_s if decode_s > 0 else 0.0


def measure_target_alone(engine: Engine, tokens: int = 8,
                         cancel: threading.Event | None = None) -> float | None:
    """The target's own decode rate (tok/s) here and now, for an honest "x× vs target alone".

    Runs the real engine with policy `none` for `tokens` tokens right after the cached
    conversation, so nothing is prefilled and each token is one single-token target decode,
    at the context length the chat is at. It costs `tokens` target decodes (a fraction of one
    reply) and leaves the caches as a normal generation would: the next turn's prompt trims
    the extra tokens. Call it between generations; None when there is no draft to compare
    with, no conversation yet, or no room left.
    """
    ids = max(engine.cached_prompts(), key=len)  # the conversation's slot
    if engine.draft_model is None or not ids or len(ids) + tokens >= engine.n_ctx:
        return None
    done = engine.complete(ids, max_tokens=tokens, policy="none", ignore_eos=True,
                           cancel=cancel)
    if done.finish_reason == "cancelled" or done.stats.generated < 2:
        return None
    return decode_rate(done.stats) or None


def device_summary(engine: Engine) -> str:
    """Where the target runs: "CPU", or "GPU n/N layers" when llama.cpp can offload."""
    model = engine.target_model
    on_gpu = model.n_layer if model.n_gpu_layers < 0 else min(model.n_gpu_layers, model.n_layer)
    if not supports_gpu_offload() or on_gpu == 0:
        return "CPU"
    return f"GPU {on_gpu}/{model.n_layer} layers"
