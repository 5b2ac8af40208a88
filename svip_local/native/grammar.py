"""The vocabulary as llguidance sees it: its tokenizer for a loaded model, built once per model.

llguidance (the constrained-decoding engine behind llama.cpp's LLGuidance build, vLLM and
SGLang) computes token masks against its own copy of the vocabulary; its llama.cpp bridge reads
every token's bytes through llama-cpp-python (about a second for 150k tokens), so the result
is kept for the model's lifetime. Every end-of-generation token counts as end of text: a
grammar allows them where it may end, whichever one the chat template ends a turn with.
"""

from __future__ import annotations

import threading
import warnings
import weakref

from llguidance import LLTokenizer
from llguidance.llamacpp import lltokenizer_from_vocab

from svip_local.native.model import Model

_TOKENIZERS: weakref.WeakKeyDictionary[Model, LLTokenizer] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def grammar_tokenizer(model: Model) -> LLTokenizer:
    """llguidance's tokenizer for `model` (made on first use, then cached)."""
    with _LOCK:
        found = _TOKENIZERS.get(model)
        if found is None:
            model.check_open()
            eog = [t for t in range(model.n_vocab) if model.is_eog(t)]
            with warnings.catch_warnings():  # the bridge calls a deprecated llama.cpp name
                warnings.simplefilter("ignore", DeprecationWarning)
                found = lltokenizer_from_vocab(model.vocab, n_vocab=model.n_vocab,
                                               eos_token=eog or None)
            _TOKENIZERS[model] = found
        return found
