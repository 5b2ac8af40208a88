"""Tiny but real GGUF language models, written with ``gguf.GGUFWriter`` for the test suite.

Why: speculative decoding touches llama.cpp's real tokenizer, batch, KV-memory and logits paths.
Mocks cannot show that those calls are wired correctly; a real 2-layer ``llama`` model with a
real byte-level BPE vocabulary of a few hundred tokens can, and it loads and decodes in
milliseconds on a CPU. Weights are random but seeded, so every file is reproducible
byte-for-byte, and a draft written as "target + noise" agrees with its target only partly,
which is what acceptance/rejection tests need.
"""

from __future__ import annotations

import os
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType, TokenType
from gguf.vocab import bytes_to_unicode

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# ChatML, as in Qwen2.5's tokenizer_config.json (minus the tool-calling branches).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Scales of the random weights, tuned by measurement over seeds 0-4. The output layer holds a
# random bigram "backbone": on one random cycle through the vocabulary, each token's successor
# gets a logit of about _BIGRAM_LOGIT, on top of Gaussian logits of std _LOGIT_SCALE. That keeps
# the top-1 probability at temperature 1 mostly between 0.1 and 0.9 (median about 0.4) and
# gives the argmax a margin, so a noisy draft agrees with its target on part of the tokens
# (with Gaussian logits alone, agreement at noise 0.5 stayed under 25% in every setting tried).
# _QK_GAIN and _BRANCH (scale of the attention and FFN outputs added to the residual stream)
# let the context change the argmax in about 20% of positions, so stale or missing KV entries
# change the output.
_QK_GAIN = 1.5
_BRANCH = 0.4
_BIGRAM_LOGIT = 8.25
_LOGIT_SCALE = 1.5

# Text the BPE merges are learned from: plain English, so merges form common pieces
# (" the", "ing", " and", ...) and tokenizing English gives multi-byte tokens.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. It is a sentence that holds every letter of the
alphabet, and people have used it for a long time to test how a machine types and prints text.
A language model reads a string of tokens and guesses the next one. When the guess is good, the
model is useful; when it is bad, the text it writes does not make much sense. Speculative
decoding runs a small and fast draft model first. The draft proposes a few tokens, and then the
large target model checks all of them in a single pass. Every token that the target accepts is
kept, and the first token it rejects is replaced with the one the target would have chosen.
This is why the output is the same as if the target had written every token on its own, but
it comes out faster when the draft is often right. How many tokens should the draft propose?
If it proposes too many, the target throws most of them away and the work is wasted. If it
proposes too few, the target runs more often than it needs to. A good policy looks at how sure
the draft is about each token, and it stops drafting when the draft starts to be unsure.
In the morning the village was quiet. A woman walked along the river with her dog, and the
children were still asleep in their houses. She thought about the letter she had written the
night before, and she wondered if she should send it at all. The sun was rising over the hills
and the water was bright and cold. She stopped on the bridge, read the letter one more time,
and then she put it back in her pocket and walked on toward the market in the town.
"""

# Pre-tokenizer used for training only: an ASCII version of the Qwen2 regex that llama.cpp
# applies (letters with one leading non-letter, single digits, punctuation runs, whitespace).
_PRETOKENIZE = re.compile(
    r"'(?:[sStTmMdD]|re|ve|ll)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]| ?[^\sA-Za-z0-9]+[\r\n]*"
    r"|\s*[\r\n]+|\s+"
)


@dataclass(frozen=True)
class TinyVocab:
    """A GPT-2 style byte-level BPE vocabulary.

    Token ids: 0-255 are the bytes (in GPT-2's byte-to-unicode spelling, id == byte value),
    then one token per merge, then the control tokens ``<|endoftext|>`` (BOS and PAD),
    ``<|im_start|>`` and ``<|im_end|>`` (EOS and EOT), like Qwen2.5's ChatML setup.
    """

    tokens: tuple[str, ...]
    merges: tuple[str, ...]

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @property
    def bos_id(self) -> int:
        return self.tokens.index(ENDOFTEXT)

    @property
    def im_start_id(self) -> int:
        return self.tokens.index(IM_START)

    @property
    def eos_id(self) -> int:
        return self.tokens.index(IM_END)

    @property
    def control_ids(self) -> tuple[int, ...]:
        return self.bos_id, self.im_start_id, self.eos_id

    @property
    def token_types(self) -> list[int]:
        control = set(self.control_ids)
        return [
            TokenType.CONTROL if i in control else TokenType.NORMAL for i in range(self.n_vocab)
        ]


def build_vocab(n_merges: int = 200, corpus: str = _CORPUS) -> TinyVocab:
    """Learn up to ``n_merges`` BPE merges from ``corpus`` (greedy, most frequent pair first).

    Stops early when no pair occurs twice (the built-in corpus gives 186 merges). Deterministic:
    ties between equally frequent pairs go to the lexicographically smallest pair.
    """
    byte_chars = bytes_to_unicode()
    words = Counter(
        tuple(byte_chars[b] for b in piece.encode()) for piece in _PRETOKENIZE.findall(corpus)
    )
    merged: list[str] = []
    merges: list[str] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(f"{best[0]} {best[1]}")
        merged.append(best[0] + best[1])
        words = Counter({_merge(word, best): count for word, count in words.items()})
    tokens = [byte_chars[b] for b in range(256)] + merged + [ENDOFTEXT, IM_START, IM_END]
    return TinyVocab(tokens=tuple(tokens), merges=tuple(merges))


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if word[i : i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


SMALL_VOCAB = build_vocab()
# Fewer merges: 86 tokens fewer (within the 128-token size difference llama.cpp's speculative
# compatibility check tolerates), but other token texts from id 356 on and other BOS/EOS ids,
# so an exact-size check, a per-token text check and a special-id check all reject it.
MISMATCHED_VOCAB = build_vocab(n_merges=100)


def _rng(seed: int, name: str, stream: int) -> np.random.Generator:
    # One generator per (seed, tensor name, stream): a tensor's values do not depend on the
    # other tensors, so a 1-layer model shares its embeddings and first block with a 2-layer
    # one; ``stream`` keeps weights (0) and noise (1) apart even when seed == noise_seed.
    return np.random.default_rng([seed, zlib.crc32(name.encode()), stream])


def _init_weights(
    seed: int, vocab: TinyVocab, n_layer: int, n_embd: int, n_ff: int
) -> dict[str, np.ndarray]:
    """Every tensor of llama.cpp's ``llama`` architecture, in file order.

    Numpy shapes are (out, in): GGUF stores them reversed, as ggml's ne = {in, out}.
    A std of None marks an RMS-norm weight (all ones).
    """

    def init(name: str, shape: tuple[int, ...], std: float | None) -> np.ndarray:
        if std is None:
            return np.ones(shape, dtype=np.float32)
        return _rng(seed, name, 0).standard_normal(shape, dtype=np.float32) * np.float32(std)

    embd = init("token_embd.weight", (vocab.n_vocab, n_embd), 1.0)
    weights = {"token_embd.weight": embd}
    for i in range(n_layer):
        for part, shape, std in (
            ("attn_norm", (n_embd,), None),
            ("attn_q", (n_embd, n_embd), _QK_GAIN / n_embd**0.5),
            ("attn_k", (n_embd, n_embd), _QK_GAIN / n_embd**0.5),
            ("attn_v", (n_embd, n_embd), 1 / n_embd**0.5),
            ("attn_output", (n_embd, n_embd), _BRANCH / n_embd**0.5),
            ("ffn_norm", (n_embd,), None),
            ("ffn_gate", (n_ff, n_embd), 1 / n_embd**0.5),
            ("ffn_up", (n_ff, n_embd), 1 / n_embd**0.5),
            ("ffn_down", (n_embd, n_ff), _BRANCH / n_ff**0.5),
        ):
            name = f"blk.{i}.{part}.weight"
            weights[name] = init(name, shape, std)
    weights["output_norm.weight"] = init("output_norm.weight", (n_embd,), None)
    # Bigram backbone: the tokens form one random cycle, and the output row of each token's
    # successor is (a multiple of) the token's embedding.
    cycle = _rng(seed, "bigram-cycle", 0).permutation(vocab.n_vocab)
    predecessor = np.empty_like(cycle)
    predecessor[cycle] = np.roll(cycle, 1)
    output = init("output.weight", (vocab.n_vocab, n_embd), _LOGIT_SCALE / n_embd**0.5)
    weights["output.weight"] = output + embd[predecessor] * np.float32(_BIGRAM_LOGIT / n_embd)
    return weights


def write_tiny_model(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_ff: int = 128,
    n_ctx_train: int = 2048,
    noise: float = 0.0,
    noise_seed: int = 1,
    vocab: TinyVocab | None = None,
) -> Path:
    """Write an all-F32 ``llama``-architecture GGUF with a ChatML byte-level BPE tokenizer.

    The weights come from ``seed``. With ``noise > 0`` every tensor gets Gaussian noise of
    standard deviation ``noise`` times the tensor's RMS, drawn from ``noise_seed``: a draft
    written with the target's seed plus noise then agrees with the target on part of the greedy
    tokens (about 70% at noise 0.3, 55% at 0.4, 40% at 0.5). The same arguments give
    byte-identical files.
    """
    vocab = vocab or SMALL_VOCAB
    path = Path(path)
    writer = GGUFWriter(path, "llama")
    writer.add_name("svip-tiny")
    writer.add_file_type(LlamaFileType.ALL_F32)
    writer.add_vocab_size(vocab.n_vocab)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_rope_freq_base(10000.0)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_pad_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_eot_token_id(vocab.eos_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    for name, tensor in _init_weights(seed, vocab, n_layer, n_embd, n_ff).items():
        if noise:
            scale = np.float32(noise * np.sqrt(np.mean(np.square(tensor))))
            tensor = tensor + scale * _rng(noise_seed, name, 1).standard_normal(
                tensor.shape, dtype=np.float32
            )
        writer.add_tensor(name, tensor)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_mismatched_vocab_model(path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write a model shaped like the default one but with ``MISMATCHED_VOCAB``.

    For tests of the "draft vocabulary does not match the target's" error path.
    """
    return write_tiny_model(path, seed=seed, vocab=MISMATCHED_VOCAB)
