"""Engine-side chat on tiny generated models: templates, prefix reuse, trimming, overflow."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from svip_local.chat import (
    ChatTemplate,
    fit_messages,
    measure_target_alone,
    prompt_ids,
    stream_chat,
)
from svip_local.engine import Engine
from svip_local.errors import InvalidRequestError, PromptTooLongError
from svip_local.events import Done, Notice, Round, Token
from svip_local.messages import validate_messages
from svip_local.native import common_prefix

TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello there."},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "Tell me about the fox."},
]
CHATML_TWO_TURNS = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nHello there.<|im_end|>\n"
    "<|im_start|>assistant\nHi! How can I help?<|im_end|>\n"
    "<|im_start|>user\nTell me about the fox.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


# One thread: tiny models gain nothing from more, and spinning llama.cpp threads on a busy
# machine slow every test down.
@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path):
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, policy="svip", n_threads=1) as eng:
        yield eng


def run(engine: Engine, messages: list[dict[str, str]], **kwargs) -> tuple[list, Done]:
    events = list(stream_chat(engine, messages, **kwargs))
    assert isinstance(events[-1], Done)
    return events, events[-1]


def reply_turn(messages: list[dict[str, str]], reply: str, question: str) -> list[dict[str, str]]:
    return [*messages, {"role": "assistant", "content": reply},
            {"role": "user", "content": question}]


def test_gguf_template_renders_chatml_exactly(engine: Engine) -> None:
    tmpl = ChatTemplate.for_model(engine.target_model)
    assert tmpl.source == "gguf"
    assert tmpl.render(TWO_TURNS) == CHATML_TWO_TURNS
    assert tmpl.end_of_turn == "<|im_end|>"


def test_builtin_template_by_name_matches_the_jinja_one(engine: Engine) -> None:
    builtin = ChatTemplate.for_model(engine.target_model, "chatml")
    assert builtin.source == "builtin:chatml"
    assert builtin.render(TWO_TURNS) == CHATML_TWO_TURNS
    with pytest.raises(InvalidRequestError, match="unknown chat template 'no-such'"):
        ChatTemplate.for_model(engine.target_model, "no-such")


def _stub_model(template: str | None) -> SimpleNamespace:
    return SimpleNamespace(chat_template=lambda: template,
                           special=SimpleNamespace(bos=-1, eos=-1))


def test_gguf_without_template_falls_back_to_chatml() -> None:
    tmpl = ChatTemplate.for_model(_stub_model(None))  # type: ignore[arg-type]
    assert tmpl.builtin == "chatml"
    assert tmpl.render(TWO_TURNS) == CHATML_TWO_TURNS


def test_broken_jinja_falls_back_to_llama_cpp_detection() -> None:
    # Not valid Jinja ({% endfor %} missing), but llama.cpp recognises ChatML by its markers.
    broken = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    tmpl = ChatTemplate.for_model(_stub_model(broken))  # type: ignore[arg-type]
    assert tmpl.jinja is None and tmpl.source.startswith("builtin")
    assert tmpl.render(TWO_TURNS) == CHATML_TWO_TURNS


@pytest.mark.parametrize("messages, error", [
    ([], "conversation is empty"),
    ([{"role": "robot", "content": "x"}], "needs a role"),
    ([{"role": "user", "content": 3}], "needs a role"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
     "last message must be the user's"),
])
def test_bad_messages_are_rejected_before_any_work(messages: list, error: str) -> None:
    with pytest.raises(InvalidRequestError, match=error):
        validate_messages(messages)


def test_chat_streams_the_engine_events(engine: Engine) -> None:
    events, done = run(engine, TWO_TURNS, max_tokens=24)
    tokens = [e for e in events if isinstance(e, Token)]
    assert tokens and any(isinstance(e, Round) for e in events)
    assert not any(isinstance(e, Notice) for e in events)
    assert done.stats.generated == len(tokens) == len(done.tokens)
    assert done.stats.tokens_per_second > 0 and done.stats.rounds > 0


def test_next_turn_decodes_only_the_new_tokens(engine: Engine) -> None:
    first = TWO_TURNS[:2]
    _, done = run(engine, first, max_tokens=40)
    cached = list(engine.target_ctx.tokens)
    second = reply_turn(first, done.text, "And then what happened?")
    ids = prompt_ids(engine, ChatTemplate.for_model(engine.target_model).render(second))
    # The whole cached turn (prompt and reply, in the generated tokens) is reused...
    assert ids[:len(cached)] == cached
    target_before, draft_before = engine.target_ctx.n_decoded, engine.draft_ctx.n_decoded
    _, done2 = run(engine, second, max_tokens=8)
    # ...so prefill decodes only what is new (the last prompt token goes in the first round).
    new = len(ids) - len(cached)
    assert done2.stats.prompt_tokens == len(ids)
    assert done2.stats.prefill_tokens == new - 1
    st = done2.stats
    assert engine.target_ctx.n_decoded - target_before == st.prefill_tokens + st.rounds + st.drafted
    # The draft catches up lazily on the same new tokens, not on the whole conversation.
    assert engine.draft_ctx.n_decoded - draft_before <= new + st.rounds + st.drafted


def test_regenerate_and_edit_trim_both_caches(engine: Engine, tiny_target: Path,
                                              tiny_draft_noisy: Path) -> None:
    first = TWO_TURNS[:2]
    _, done = run(engine, first, max_tokens=30)
    first_turn = len(engine.target_ctx.tokens)
    second = reply_turn(first, done.text, "What does the draft model do?")
    _, answer = run(engine, second, max_tokens=30)
    # Regenerate: same prompt again; nothing to prefill, and greedy gives the same reply,
    # which it would not if the first answer's tokens were still in either cache.
    _, again = run(engine, second, max_tokens=30)
    assert again.stats.prefill_tokens == 0
    assert again.tokens == answer.tokens
    # Edit the last message: the caches are cut inside it, the turn before is kept.
    edited = reply_turn(first, done.text, "What does the target model do?")
    ids = prompt_ids(engine, ChatTemplate.for_model(engine.target_model).render(edited))
    kept = common_prefix(engine.target_ctx.tokens, ids, len(ids) - 1)
    _, edit = run(engine, edited, max_tokens=30)
    assert kept >= first_turn
    assert edit.stats.prefill_tokens == len(ids) - 1 - kept
    target_kv, draft_kv = engine.kv_lengths()
    assert target_kv == len(engine.target_ctx.tokens)
    assert draft_kv == len(engine.draft_ctx.tokens)
    # A fresh engine decoding the same ids from scratch agrees: nothing stale was left behind.
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, policy="svip", n_threads=1) as fresh:
        assert fresh.complete(ids, max_tokens=30).tokens == edit.tokens


def _long_turns(n: int) -> list[dict[str, str]]:
    text = "The quick brown fox jumps over the lazy dog and the river is bright and cold. "
    msgs = [{"role": "system", "content": "SYSTEM PROMPT KEPT"}]
    for i in range(n):
        msgs += [{"role": "user", "content": f"question {i}: {text}"},
                 {"role": "assistant", "content": f"answer {i}: {text}"}]
    return [*msgs, {"role": "user", "content": "last question"}]


def test_overflow_drops_the_oldest_turns_and_keeps_the_system_prompt(tiny_target: Path,
                                                                    tiny_draft_noisy: Path
                                                                    ) -> None:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=256, policy="svip", n_threads=1) as small:
        messages = _long_turns(4)
        limit = small.n_ctx - 16
        template = ChatTemplate.for_model(small.target_model)
        assert len(small.tokenize(template.render(messages), parse_special=True)) > small.n_ctx
        fitted = fit_messages(small, template, messages, max_tokens=16)
        ids, dropped = fitted.ids, fitted.dropped
        assert 1 <= dropped < 4 and len(ids) <= limit
        text = small.target_model.detokenize(ids)
        assert "SYSTEM PROMPT KEPT" in text and "last question" in text
        assert "question 0:" not in text and f"question {dropped}:" in text
        # Dropping one turn fewer would not fit: no more is dropped than needed.
        fewer = messages[:1] + messages[1 + 2 * (dropped - 1):]
        assert len(prompt_ids(small, template.render(fewer))) > limit
        events, done = run(small, messages, max_tokens=16)
        assert isinstance(events[0], Notice) and f"oldest {dropped} turn" in events[0].message
        assert done.stats.prompt_tokens == len(ids)


def test_a_message_longer_than_the_context_is_refused(tiny_target: Path) -> None:
    with Engine(tiny_target, n_ctx=64, n_threads=1) as small:
        long = [{"role": "user", "content": "the fox jumps over the dog " * small.n_ctx}]
        with pytest.raises(PromptTooLongError, match="context is full"):
            stream_chat(small, long, max_tokens=16)


def test_target_alone_is_timed_without_disturbing_the_chat(engine: Engine,
                                                           tiny_target: Path) -> None:
    _, done = run(engine, TWO_TURNS, max_tokens=16)
    rate = measure_target_alone(engine)
    assert rate is not None and rate > 0
    _, again = run(engine, TWO_TURNS, max_tokens=16)  # the extra tokens are trimmed away
    assert again.tokens == done.tokens and again.stats.prefill_tokens == 0
    with Engine(tiny_target, n_ctx=128, n_threads=1) as alone:
        run(alone, TWO_TURNS, max_tokens=4)
        assert measure_target_alone(alone) is None  # no draft: nothing to compare
