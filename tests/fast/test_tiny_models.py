"""The tiny GGUF models load in llama.cpp, tokenize like a real BPE model and decode sensibly.

Everything goes through llama-cpp-python's low-level ctypes bindings, the same layer the
project's engine uses, so these tests also pin down the binding calls the fixtures rely on.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator
from pathlib import Path

import llama_cpp.llama_cpp as C
import numpy as np
import pytest

from tests.support.tiny_models import (
    CHATML_TEMPLATE,
    MISMATCHED_VOCAB,
    SMALL_VOCAB,
    write_mismatched_vocab_model,
    write_tiny_model,
)

_GGML_LOG_LEVEL_ERROR = 4  # ggml.h's enum (llama_cpp/_logger.py still uses an older numbering)
_PROMPTS = ("The quick brown fox", "A language model reads", "In the morning she")


@C.llama_log_callback
def _errors_only(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    # llama.cpp logs every model load at length; keep only errors (pytest shows them on failure).
    if level == _GGML_LOG_LEVEL_ERROR:
        sys.stderr.write(text.decode(errors="replace"))


@pytest.fixture(scope="module", autouse=True)
def _quiet_llama_log() -> Iterator[None]:
    previous, user_data = C.llama_log_callback(), ctypes.c_void_p()
    C.llama_log_get(ctypes.byref(previous), ctypes.byref(user_data))
    C.llama_backend_init()
    C.llama_log_set(_errors_only, None)
    yield
    C.llama_log_set(previous, user_data)


class LowLevelModel:
    """A model and a one-sequence context driven through the raw bindings."""

    def __init__(self, path: Path, n_ctx: int = 512) -> None:
        params = C.llama_model_default_params()
        self.model = C.llama_model_load_from_file(str(path).encode(), params)
        assert self.model, f"llama.cpp could not load {path}"
        self.vocab = C.llama_model_get_vocab(self.model)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        ctx_params = C.llama_context_default_params()
        ctx_params.n_ctx = ctx_params.n_batch = n_ctx
        # One thread: at this size more threads only wait on each other (and on a busy CI box).
        ctx_params.n_threads = ctx_params.n_threads_batch = 1
        self.ctx = C.llama_init_from_model(self.model, ctx_params)
        assert self.ctx, "llama.cpp could not create a context"
        self.batch = C.llama_batch_init(n_ctx, 0, 1)

    def close(self) -> None:
        C.llama_batch_free(self.batch)
        C.llama_free(self.ctx)
        C.llama_model_free(self.model)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        data = text.encode()
        n = -C.llama_tokenize(self.vocab, data, len(data), None, 0, False, special)
        out = (C.llama_token * n)()
        assert C.llama_tokenize(self.vocab, data, len(data), out, n, False, special) == n
        return list(out)

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        assert 0 <= n <= len(buf)
        return buf.raw[:n]

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode()

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Next-token logits after every prefix of ``tokens``, decoded from an empty memory."""
        C.llama_memory_clear(C.llama_get_memory(self.ctx), True)
        for i, token in enumerate(tokens):
            self.batch.token[i] = token
            self.batch.pos[i] = i
            self.batch.n_seq_id[i] = 1
            self.batch.seq_id[i][0] = 0
            self.batch.logits[i] = 1
        self.batch.n_tokens = len(tokens)
        assert C.llama_decode(self.ctx, self.batch) == 0
        return np.stack(
            [
                np.ctypeslib.as_array(C.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
                for i in range(len(tokens))
            ]
        )

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        """``n`` greedy tokens after ``prompt`` (recomputes the prefix: fine at this size)."""
        tokens = list(prompt)
        for _ in range(n):
            tokens.append(int(self.logits(tokens)[-1].argmax()))
        return tokens[len(prompt) :]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def target_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "target.gguf")


@pytest.fixture(scope="module")
def target(target_path: Path) -> Iterator[LowLevelModel]:
    model = LowLevelModel(target_path)
    yield model
    model.close()


def test_loads_with_expected_vocab_and_metadata(target: LowLevelModel) -> None:
    assert target.n_vocab == SMALL_VOCAB.n_vocab
    assert C.llama_vocab_type(target.vocab) == C.LLAMA_VOCAB_TYPE_BPE
    assert C.llama_vocab_bos(target.vocab) == SMALL_VOCAB.bos_id
    assert C.llama_vocab_eos(target.vocab) == SMALL_VOCAB.eos_id
    assert C.llama_vocab_eot(target.vocab) == SMALL_VOCAB.eos_id
    assert not C.llama_vocab_get_add_bos(target.vocab)
    assert C.llama_vocab_is_eog(target.vocab, SMALL_VOCAB.eos_id)
    assert C.llama_vocab_is_control(target.vocab, SMALL_VOCAB.im_start_id)
    assert C.llama_model_n_layer(target.model) == 2
    assert C.llama_model_n_ctx_train(target.model) == 2048
    template = C.llama_model_chat_template(target.model, None)
    assert template is not None and template.decode() == CHATML_TEMPLATE


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "héllo 世界 🙂",
        "  tabs\tand\nnewlines\r\n",
        "x = f(3.14) + 'quoted' // 42!",
    ],
)
def test_tokenizer_round_trips_text(target: LowLevelModel, text: str) -> None:
    tokens = target.tokenize(text)
    assert target.detokenize(tokens) == text
    assert all(0 <= t < SMALL_VOCAB.n_vocab for t in tokens)


def test_merges_make_english_shorter_than_bytes(target: LowLevelModel) -> None:
    text = "The draft model proposes tokens and the target checks them."
    tokens = target.tokenize(text)
    assert len(tokens) < len(text.encode()) / 2
    assert target.tokenize(" the") == [SMALL_VOCAB.tokens.index("Ġthe")]


def test_chatml_markers_are_single_control_tokens(target: LowLevelModel) -> None:
    tokens = target.tokenize("<|im_start|>user\nhi<|im_end|>\n", special=True)
    assert tokens[0] == SMALL_VOCAB.im_start_id
    assert SMALL_VOCAB.eos_id in tokens
    # Without parse_special the markers are plain text, and control pieces render as text.
    assert SMALL_VOCAB.im_start_id not in target.tokenize("<|im_start|>")
    assert target.piece(SMALL_VOCAB.eos_id) == b"<|im_end|>"


def test_next_token_distribution_is_peaked_but_not_collapsed(target: LowLevelModel) -> None:
    top1 = np.concatenate(
        [_softmax(target.logits(target.tokenize(p))).max(axis=-1) for p in _PROMPTS]
    )
    assert 0.2 <= np.median(top1) <= 0.9, top1
    assert top1.min() < 0.9 and top1.max() > 0.2, top1


def test_greedy_generation_varies(target: LowLevelModel) -> None:
    for prompt in _PROMPTS:
        out = target.greedy(target.tokenize(prompt), 24)
        assert len(set(out)) >= 8, out
        assert out[0] != out[1] or out[1] != out[2], out


def test_next_token_depends_on_earlier_context(target: LowLevelModel) -> None:
    # Not a pure bigram model: a KV cache that lost or kept the wrong positions must show.
    changed = []
    for prompt in _PROMPTS:
        seq = target.tokenize(prompt)
        seq += target.greedy(seq, 16)
        full = target.logits(seq).argmax(axis=-1)
        changed += [
            full[i] != target.logits(seq[i - 1 : i + 1])[-1].argmax() for i in range(1, len(seq))
        ]
    assert 0.05 <= np.mean(changed) <= 0.6, np.mean(changed)


def test_same_arguments_give_identical_files(tmp_path: Path) -> None:
    a = write_tiny_model(tmp_path / "a.gguf", seed=3, noise=0.4)
    b = write_tiny_model(tmp_path / "b.gguf", seed=3, noise=0.4)
    assert a.read_bytes() == b.read_bytes()
    assert write_tiny_model(tmp_path / "c.gguf", seed=4).read_bytes() != a.read_bytes()


def test_noisy_draft_agrees_with_target_only_partly(target: LowLevelModel, tmp_path: Path) -> None:
    draft = LowLevelModel(write_tiny_model(tmp_path / "draft.gguf", noise=0.4))
    try:
        agree = []
        for prompt in _PROMPTS:
            tokens = target.tokenize(prompt)
            out = target.greedy(tokens, 24)
            agree.append(draft.logits(tokens + out).argmax(axis=-1)[len(tokens) - 1 : -1] == out)
        rate = float(np.mean(agree))
    finally:
        draft.close()
    assert 0.3 <= rate <= 0.8, rate


def test_mismatched_vocab_model_loads_with_other_tokens(tmp_path: Path) -> None:
    other = LowLevelModel(write_mismatched_vocab_model(tmp_path / "other.gguf"))
    try:
        assert other.n_vocab == MISMATCHED_VOCAB.n_vocab != SMALL_VOCAB.n_vocab
        assert C.llama_vocab_eos(other.vocab) != SMALL_VOCAB.eos_id
        assert other.detokenize(other.tokenize("héllo world")) == "héllo world"
    finally:
        other.close()
