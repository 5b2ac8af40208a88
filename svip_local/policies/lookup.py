"""Prompt lookup: draft tokens copied from the context instead of decoded by the draft model.

Summaries, RAG answers, edited code and translations repeat long stretches of their input (and
generations repeat themselves). Where the last `ngram` tokens occurred before, the tokens that
followed that occurrence are a free guess at what comes next (Saxena 2023, "prompt lookup
decoding"; llama.cpp's ngram speculative types). Such a round costs one target verification and
no draft step at all, so on a machine where the draft model's steps are a large part of a round
it is faster whenever the guess is good; the draft model catches up on the copied tokens in one
batch when it next drafts. Whether it pays, and with which `ngram` and length, is measured by
`svip-local calibrate`. `lookup-tree` verifies the continuations of every earlier occurrence at
once, as a token tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from svip_local.errors import InvalidRequestError
from svip_local.policies.table import Param, PolicyContext, PolicyEntry, register
from svip_local.tree import TokenTree

DEFAULT_NGRAM = 4
DEFAULT_TOKENS = 8
DEFAULT_TREE_NODES = 16
MAX_OCCURRENCES = 64  # the most recent occurrences a lookup tree is built from


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
        limit = min(cap, self.max_tokens)
        starts = occurrences(a, self.ngram) if limit > 0 else EMPTY
        if not len(starts):
            return []
        first = int(starts[-1]) + self.ngram
        return [int(t) for t in a[first: first + limit]]

    def propose_into(self, tree: TokenTree, context: Sequence[int] | npt.NDArray[np.int32],
                     cap: int) -> None:
        tree.extend_chain(self.propose(context, cap))


EMPTY: npt.NDArray[np.intp] = np.empty(0, np.intp)


def occurrences(a: npt.NDArray[np.int32], n: int) -> npt.NDArray[np.intp]:
    """Starts i of every earlier occurrence of a's last n tokens that has a successor
    (a[i:i+n] == a[-n:], i < len(a) - n), oldest first."""
    size = len(a)
    if size <= n:
        return EMPTY
    key = a[size - n:]
    hit = a[: size - n] == key[0]
    for t in range(1, n):
        hit &= a[t: size - n + t] == key[t]
    return np.flatnonzero(hit)


@register("lookup-tree", Param("ngram", int, DEFAULT_NGRAM, "tokens the context must end in"),
          Param("nodes", int, DEFAULT_TREE_NODES, "most tree nodes"), kind="proposer",
          rule="prompt lookup over EVERY earlier occurrence of the last `ngram` tokens: their "
               "continuations merged into one tree (the most frequent first), up to `nodes` "
               "tokens verified in one batch; otherwise POLICY drafts",
          label="lookup tree {ngram}:{nodes}",
          grid=[(n, m) for n in (3, 4, 5) for m in (8, 16, 32)])
@dataclass(frozen=True)
class LookupTree:
    """Multi-candidate prompt lookup. Where the last n-gram occurred several times with
    different continuations (a function called with other arguments, a list item repeated
    with variations), the single most recent one is often the wrong guess; the tree verifies
    the alternatives in the same batch, which costs little more than one chain. Nodes are
    kept by how many occurrences pass through them, then by depth, then by recency: a prefix
    of that order is always a tree, so the budget cuts the least supported and deepest
    branches first."""

    ngram: int = DEFAULT_NGRAM
    nodes: int = DEFAULT_TREE_NODES

    entry: ClassVar[PolicyEntry]

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise InvalidRequestError(f"lookup n-gram must be >= 1, got {self.ngram}")
        if self.nodes < 1:
            raise InvalidRequestError(f"lookup tree's node budget must be >= 1, got "
                                      f"{self.nodes}")

    @classmethod
    def build(cls, args: tuple[Any, ...], context: PolicyContext) -> LookupTree:
        return cls(*args)

    @property
    def name(self) -> str:
        return self.entry.spec((self.ngram, self.nodes))

    def propose_into(self, tree: TokenTree, context: Sequence[int] | npt.NDArray[np.int32],
                     cap: int) -> None:
        a = np.asarray(context)
        depth = min(cap, self.nodes)
        starts = occurrences(a, self.ngram) if depth > 0 else EMPTY
        if not len(starts):
            return
        # The trie of the continuations, newest occurrence first: (parent, token) -> node.
        index: dict[tuple[int, int], int] = {}
        parents: list[int] = []
        tokens: list[int] = []
        support: list[int] = []
        depths: list[int] = []
        for s in starts[::-1][:MAX_OCCURRENCES]:
            node = -1
            for d, t in enumerate(a[s + self.ngram: s + self.ngram + depth].tolist()):
                child = index.get((node, t))
                if child is None:
                    child = index[(node, t)] = len(tokens)
                    parents.append(node)
                    tokens.append(t)
                    support.append(0)
                    depths.append(d)
                support[child] += 1
                node = child
        # Most supported first, then shallowest (reached more often), then newest: a parent
        # always comes before its children (as much support or more, and shallower).
        keep = sorted(range(len(tokens)),
                      key=lambda i: (-support[i], depths[i], i))[: self.nodes]
        new: dict[int, int] = {}
        for i in keep:
            p = parents[i]
            new[i] = tree.add(tokens[i], -1 if p < 0 else new[p])
