"""Chat on the real Qwen2.5-Coder pair: its own template, and prefix reuse across turns."""

from __future__ import annotations

from pathlib import Path

import pytest

from svip_local.chat import ChatTemplate, prompt_ids, stream_chat
from svip_local.engine import Engine
from svip_local.events import Done
from svip_local.native import Model

pytestmark = pytest.mark.real_pair

TWO_TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Write a Python hello world."},
]
# Qwen2.5's template adds its default system prompt when the conversation has none.
EXPECTED = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\n"
    "<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
    "<|im_start|>user\nWrite a Python hello world.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_the_gguf_template_renders_the_expected_prompt(real_pair: tuple[Path, Path]) -> None:
    with Model(real_pair[0], vocab_only=True) as model:
        tmpl = ChatTemplate.for_model(model)
        assert tmpl.source == "gguf" and tmpl.jinja == model.chat_template()
        assert tmpl.render(TWO_TURNS) == EXPECTED
        assert tmpl.end_of_turn == "<|im_end|>"
        with_system = [{"role": "system", "content": "Be brief."}, *TWO_TURNS]
        assert tmpl.render(with_system).startswith(
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")


def test_the_second_turn_decodes_only_its_new_tokens(real_pair: tuple[Path, Path]) -> None:
    with Engine(*real_pair, n_ctx=1024, policy="svip") as engine:
        first = TWO_TURNS[2:]
        done = list(stream_chat(engine, first, max_tokens=24))[-1]
        assert isinstance(done, Done) and done.text
        cached = list(engine.target_ctx.tokens)
        second = [*first, {"role": "assistant", "content": done.text},
                  {"role": "user", "content": "Now in Rust."}]
        ids = prompt_ids(engine, ChatTemplate.for_model(engine.target_model).render(second))
        assert ids[:len(cached)] == cached
        before = engine.target_ctx.n_decoded
        done2 = list(stream_chat(engine, second, max_tokens=8))[-1]
        st = done2.stats
        assert st.prefill_tokens == len(ids) - len(cached) - 1
        assert engine.target_ctx.n_decoded - before == st.prefill_tokens + st.rounds + st.drafted
