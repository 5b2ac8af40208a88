"""Bad input gets a specific error before any work, and never a crash or a leaked context."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from svip_local import (
    Engine,
    IncompatiblePairError,
    InvalidRequestError,
    ModelFileError,
    PromptTooLongError,
    SamplingParams,
)


def truncated_copy(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) * 2 // 3])
    return dst


@pytest.mark.parametrize(
    ("make_target", "message"),
    [
        (lambda d, t: d / "missing.gguf", "model file not found"),
        (lambda d, t: d, "not a file"),
        (lambda d, t: (d / "notes.gguf").write_text("hello, not a model") and d / "notes.gguf",
         "not a GGUF file"),
        (lambda d, t: truncated_copy(t, d / "truncated.gguf"), "could not load"),
    ],
    ids=["missing", "directory", "not-gguf", "truncated"],
)
def test_bad_model_files(tmp_path: Path, tiny_target: Path, make_target, message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        Engine(make_target(tmp_path, tiny_target), n_ctx=64)


def test_bad_draft_file_frees_the_loaded_target(tmp_path: Path, tiny_target: Path) -> None:
    with pytest.raises(ModelFileError, match="model file not found"):
        Engine(tiny_target, tmp_path / "missing-draft.gguf", n_ctx=64)
    gc.collect()


@pytest.mark.parametrize(("setting", "message"), [
    ({"policy": "bogus"}, "unknown policy 'bogus'"),
    ({"policy": "svip:2"}, "svip threshold h must be in"),
    ({"n_ctx": 8}, "n_ctx must be at least 64"),
    ({"n_ctx": 48}, "n_ctx must be at least 64"),  # llama.cpp would abort the process
    ({"n_thread": 2}, "unknown engine setting"),
])
def test_bad_engine_settings(tiny_target: Path, setting: dict[str, object],
                             message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        Engine(tiny_target, **setting)


def test_mismatched_vocabularies(tiny_target: Path, tiny_mismatched: Path) -> None:
    pattern = r"cannot speculate for target target.gguf: EOS token \d+ vs \d+"
    with pytest.raises(IncompatiblePairError, match=pattern):
        Engine(tiny_target, tiny_mismatched, n_ctx=64)


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Engine:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=64, n_threads=1, parallel=1) as eng:
        yield eng


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prompt": "word " * 200}, PromptTooLongError, "context holds 256"),
        ({"prompt": "hi", "max_tokens": 0}, InvalidRequestError, "max_tokens must be positive"),
        ({"prompt": "hi", "max_tokens": -3}, InvalidRequestError, "max_tokens must be positive"),
        ({"prompt": "hi", "policy": "fastest"}, InvalidRequestError, "unknown policy 'fastest'"),
        ({"prompt": "hi", "policy": "svip:abc"}, InvalidRequestError, "bad argument"),
        ({"prompt": "hi", "policy": "constant:0"}, InvalidRequestError,
         r"constant's k must be in \[1, 16\] \(max_draft = 16\), got 0"),
        ({"prompt": "hi", "policy": "svip+lookup-tree:99:9999"}, InvalidRequestError,
         r"lookup-tree's ngram must be in \[1, 64\], got 99"),
        ({"prompt": "hi", "policy": "lookup:4:65"}, InvalidRequestError,
         r"lookup's tokens must be in \[1, 64\] \(max_copy = 64\), got 65"),
        ({"prompt": "hi", "policy": "pmin:1.5"}, InvalidRequestError,
         r"pmin's p must be in \[0, 1\], got 1.5"),
        ({"prompt": "hi", "policy": "svip:nan"}, InvalidRequestError, "finite number"),
        ({"prompt": ""}, InvalidRequestError, "prompt is empty"),
        ({"prompt": [10**7]}, InvalidRequestError, "out of vocabulary range"),
    ],
    ids=["too-long", "zero-tokens", "negative-tokens", "unknown-policy", "bad-policy-arg",
         "constant-0", "lookup-tree-huge", "lookup-past-max-copy", "pmin-above-1", "svip-nan",
         "empty", "bad-ids"],
)
def test_bad_requests(engine: Engine, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        engine.generate(**kwargs)
    # The engine is untouched and still works.
    assert engine.complete("hi", max_tokens=3, ignore_eos=True).stats.generated == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_k": -1}, "top_k"),
     ({"min_p": 1.5}, "min_p")],
)
def test_bad_sampling_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        SamplingParams(**kwargs)


def test_context_end_stops_generation(engine: Engine) -> None:
    prompt = engine.tokenize("word " * 20)
    done = engine.complete(prompt, max_tokens=1000, policy="constant:4", ignore_eos=True)
    assert done.finish_reason == "context"
    assert len(prompt) + len(done.tokens) == engine.n_ctx
