"""llama-cpp-python's own high-level `Llama` as a peer in a benchmark: what a Python user picks
instead of svip-local, alone and with its prompt-lookup speculation
(`Llama(..., draft_model=LlamaPromptLookupDecoding(...))`).

Specs: `llama-cpp-python` (the target alone) and `llama-cpp-python+lookup[:N[:NGRAM]]` (N
predicted tokens, default 10, and n-gram size, default 2: the class's own defaults, which a user
who does not tune gets). They run in this process beside svip-local's policies, on the same
target file, prompts, threads and context size, with the same sampling (no top-k, top-p or
min-p truncation, where `create_completion` would otherwise apply its own defaults). Each run
empties the cache first (`reset`), so it pays its prefill, which its time includes, as ours does.
The structured-output benchmark holds it to a task's JSON Schema through its JSON path,
`LlamaGrammar.from_json_schema` (`PythonPeer.complete(..., json_schema=...)`).

This is the one module outside `svip_local.native` that imports llama_cpp (the import
contracts allow it alone), since the peer *is* llama-cpp-python's own Python API.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svip_local.bench.runner import BenchItem, RunRecord
from svip_local.errors import InvalidRequestError

PLAIN = "llama-cpp-python"
LOOKUP = "llama-cpp-python+lookup"
DEFAULT_SPECS = (PLAIN, LOOKUP)


def parse_spec(spec: str) -> tuple[int, int] | None:
    """None for the target alone, else (predicted tokens, n-gram size) of the lookup."""
    if spec == PLAIN:
        return None
    if not spec.startswith(LOOKUP):
        raise InvalidRequestError(f"not a llama-cpp-python peer spec: {spec!r}")
    rest = spec[len(LOOKUP):]
    if rest and not rest.startswith(":"):
        raise InvalidRequestError(f"expected {LOOKUP}[:N[:NGRAM]], got {spec!r}")
    parts = [p for p in rest[1:].split(":") if p] if rest else []
    try:
        n_pred = int(parts[0]) if parts else 10
        ngram = int(parts[1]) if len(parts) > 1 else 2
    except ValueError:
        raise InvalidRequestError(f"expected {LOOKUP}[:N[:NGRAM]], got {spec!r}") from None
    if n_pred < 1 or ngram < 1 or len(parts) > 2:
        raise InvalidRequestError(f"expected {LOOKUP}[:N[:NGRAM]] with N, NGRAM >= 1, "
                                  f"got {spec!r}")
    return n_pred, ngram


def open_python_api_llama(path: str | Path, *, n_ctx: int, threads: int, n_gpu_layers: int,
                          lookup: tuple[int, int] | None) -> tuple[Any, dict[int, float]]:
    """llama-cpp-python's own high-level `Llama` (with `LlamaPromptLookupDecoding` when `lookup`
    gives its predicted tokens and n-gram size), for benchmarks that race it as a peer; and a
    logit bias that puts every end-of-generation token out of reach, since `create_completion`
    has no ignore-eos flag.

    With a draft model `Llama` keeps every position's logits, but it sizes that buffer by
    `logits_all` as passed: left False, a prompt longer than n_batch (512) fails in `Llama.eval`
    ("could not broadcast"), so it is passed True whenever there is a draft.
    """
    from llama_cpp import Llama
    from llama_cpp.llama_cpp import llama_vocab_is_eog
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    draft = None if lookup is None else LlamaPromptLookupDecoding(
        num_pred_tokens=lookup[0], max_ngram_size=lookup[1])
    llm = Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                n_gpu_layers=n_gpu_layers, logits_all=draft is not None, draft_model=draft,
                verbose=False)
    vocab = llm._model.vocab
    banned = {t: -1e30 for t in range(llm.n_vocab()) if llama_vocab_is_eog(vocab, t)}
    return llm, banned


def handles(spec: str) -> bool:
    return spec == PLAIN or spec.startswith(LOOKUP)


def label(spec: str) -> str:
    """How a peer spec reads in a table."""
    lookup = parse_spec(spec)
    return "llama-cpp-python Llama" if lookup is None else (
        f"Llama + LlamaPromptLookupDecoding(num_pred_tokens={lookup[0]}, "
        f"max_ngram_size={lookup[1]})")


@dataclass(frozen=True)
class PeerCompletion:
    """What one run of a peer wrote, how many tokens, in how long (prefill included), and
    why it ended ("stop", "length")."""

    text: str
    generated: int
    wall_s: float
    finish: str


class PythonPeer:
    """One `Llama` per distinct spec, loaded on its first run (a lookup `Llama` keeps logits
    for every position, as llama-cpp-python requires for a draft model)."""

    def __init__(self, target: str | Path, *, threads: int, n_ctx: int,
                 n_gpu_layers: int = 0) -> None:
        self.target = str(target)
        self.threads, self.n_ctx, self.n_gpu_layers = threads, n_ctx, n_gpu_layers
        self._models: dict[str, Any] = {}
        self._banned: dict[int, float] = {}
        self._grammars: dict[str, Any] = {}

    def handles(self, spec: str) -> bool:
        return handles(spec)

    def run(self, item: BenchItem, spec: str, temperature: float, seed: int,
            repeat: int) -> RunRecord:
        out = self.complete(item.prompt.text, spec, max_tokens=item.max_tokens,
                            temperature=temperature, seed=seed, ignore_eos=item.ignore_eos)
        return RunRecord(item.suite, item.group, item.prompt.id, temperature, item.max_tokens,
                         spec, label(spec), repeat, out.generated, out.wall_s,
                         0.0, 0, 0, finish=out.finish or "peer")

    def complete(self, prompt: str, spec: str, *, max_tokens: int, temperature: float,
                 seed: int, ignore_eos: bool = False,
                 json_schema: dict[str, Any] | None = None) -> PeerCompletion:
        """One timed `create_completion` of `prompt` (text, special tokens parsed), held to
        `json_schema` by `LlamaGrammar.from_json_schema` (its JSON path) where given; the
        grammar is built before the clock starts, once per schema."""
        llm = self._model(spec)
        grammar = None if json_schema is None else self._grammar(json_schema)
        llm.reset()  # no prefix reuse: every run pays its prefill, like the engine's
        t0 = time.perf_counter()
        out = llm.create_completion(
            prompt, max_tokens=max_tokens, temperature=temperature,
            top_k=0, top_p=1.0, min_p=0.0, seed=seed, grammar=grammar,
            logit_bias=self._banned if ignore_eos else None)
        wall = time.perf_counter() - t0
        choice = out["choices"][0]
        return PeerCompletion(str(choice.get("text") or ""),
                              int(out["usage"]["completion_tokens"]), wall,
                              str(choice.get("finish_reason") or ""))

    def close(self) -> None:
        for llm in self._models.values():
            llm.close()
        self._models.clear()

    def _grammar(self, schema: dict[str, Any]) -> Any:
        from llama_cpp.llama_grammar import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = LlamaGrammar.from_json_schema(json.dumps(schema),
                                                                verbose=False)
        return self._grammars[key]

    def _model(self, spec: str) -> Any:
        if spec not in self._models:
            self._models[spec], self._banned = open_python_api_llama(
                self.target, n_ctx=self.n_ctx, threads=self.threads,
                n_gpu_layers=self.n_gpu_layers, lookup=parse_spec(spec))
        return self._models[spec]

