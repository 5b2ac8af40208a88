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
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from svip_local.errors import InvalidRequestError
from svip_local.policies.table import Param, PolicyContext, PolicyEntry, register

DEFAULT_NGRAM = 4
DEFAULT_TOKENS = 8


@register("lookup", Param("ngram", int, DEFAULT_NGRAM, "tokens the context must end in"),
          Param("tokens", int, DEFAULT_TOKENS, "most tokens copied"), kind="proposer",
          rule="prompt lookup first: where the last `ngram` tokens occurred before in the "
               "prompt or the reply, verify the up to `tokens` tokens that followed them, "
               "with no draft step; otherwise POLICY drafts",
          label="prompt lookup {ngram}:{tokens}",
          grid=[(n, m) for n in (2, 3, 4, 5, 6) for m in (2, 4, 8, 16)])
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

    entry: ClassVar[PolicyEntry]

    @classmethod
    def build(cls, args: tuple[Any, ...], context: PolicyContext) -> PromptLookup:
        return cls(*args)

    @property
    def name(self) -> str:
        return self.entry.spec((self.ngram, self.max_tokens))

    def propose(self, context: Sequence[int] | npt.NDArray[np.int32], cap: int) -> list[int]:
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
