"""Prompt lookup: draft tokens copied from the context instead of decoded by the draft model.

Summaries, RAG answers, edited code and translations repeat long stretches of their input (and
generations repeat themselves). Where the last `ngram` tokens occurred before, the tokens that
followed that occurrence are a free guess at what comes next (Saxena 2023, "prompt lookup
decoding"; llama.cpp's ngram speculative types). Such a round costs one target verification and
no draft step at all, so on a machine where the draft model's steps are a large part of a round
it is faster whenever the guess is good; the draft model catches up on the copied tokens in one
batch when it next drafts. Whether it pays, and with which `ngram` and length, is measured by
`svip-local calibrate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from svip_local.errors import InvalidRequestError

DEFAULT_NGRAM = 4
DEFAULT_TOKENS = 8


@dataclass(frozen=True)
class PromptLookup:
    """Propose the up to `max_tokens` tokens that followed the most recent earlier occurrence
    of the context's last `ngram` tokens. The most recent occurrence, because in a growing
    generation the nearest repetition is the likeliest to continue."""

    ngram: int = DEFAULT_NGRAM
    max_tokens: int = DEFAULT_TOKENS

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise InvalidRequestError(f"lookup n-gram must be >= 1, got {self.ngram}")
        if self.max_tokens < 1:
            raise InvalidRequestError(f"lookup length must be >= 1, got {self.max_tokens}")

    @property
    def spec(self) -> str:
        return f"lookup:{self.ngram}:{self.max_tokens}"

    def propose(self, context: Sequence[int] | np.ndarray, cap: int) -> list[int]:
        """At most min(cap, max_tokens) tokens; [] when the last n-gram never occurred before."""
        a = np.asarray(context)  # no copy when the caller already holds an array
        n, size = self.ngram, len(a)
        limit = min(cap, self.max_tokens)
        if limit <= 0 or size <= n:
            return []
        key = a[size - n:]
        # hit[i]: a[i:i+n] == key, for starts i < size - n (the occurrence has a successor).
        hit = a[: size - n] == key[0]
        for t in range(1, n):
            hit &= a[t: size - n + t] == key[t]
        starts = np.flatnonzero(hit)
        if not len(starts):
            return []
        first = int(starts[-1]) + n
        return [int(t) for t in a[first: first + limit]]


def split_lookup(spec: str) -> tuple[str, PromptLookup | None]:
    """`svip:0.3+lookup:4:8` -> ("svip:0.3", PromptLookup(4, 8)); a lookup alone runs with
    the target alone between its copies: `lookup:4:8` -> ("none", ...)."""
    parts = [s.strip() for s in spec.split("+")]
    copies = [s for s in parts if s.lower().partition(":")[0] == "lookup"]
    rest = [s for s in parts if s not in copies]
    if len(copies) > 1 or len(rest) > 1 or not all(parts):
        raise InvalidRequestError(f"bad policy {spec!r}; expected POLICY, POLICY+lookup[:N[:M]] "
                                  "or lookup[:N[:M]]")
    if not copies:
        return spec, None
    return (rest[0] if rest else "none"), parse_lookup(copies[0])


def parse_lookup(spec: str) -> PromptLookup:
    """`lookup[:NGRAM[:TOKENS]]`, e.g. `lookup:4:8`."""
    name, *args = spec.strip().lower().split(":")
    if name != "lookup" or len(args) > 2:
        raise InvalidRequestError(f"bad lookup spec {spec!r}; expected lookup[:NGRAM[:TOKENS]]")
    try:
        values = [int(a) for a in args]
    except ValueError as exc:
        raise InvalidRequestError(f"bad argument in {spec!r}: {exc}") from exc
    return PromptLookup(*values)
