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

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from svip_local.calibration.copies import MAX_MATCH, CopyEvidence
from svip_local.errors import InvalidRequestError
from svip_local.policies.round_plan import Copy
from svip_local.policies.table import Param, PolicyContext, PolicyEntry, register
from svip_local.transcript import Transcript

DEFAULT_NGRAM = 4
DEFAULT_TOKENS = 8
DEFAULT_TREE_NODES = 16
MAX_OCCURRENCES = 64  # the most recent occurrences a lookup tree is built from
MAX_BRANCHES = 64  # a tree's leaves: one KV sequence each (`native.MAX_BRANCHES`)
NGRAM = Param("ngram", int, DEFAULT_NGRAM, "tokens the context must end in", low=1,
              high=MAX_MATCH)


@register("lookup", NGRAM,
          Param("tokens", int, DEFAULT_TOKENS, "most tokens copied", low=1, limit="max_copy"),
          kind="proposer",
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

    def propose(self, transcript: Transcript, cap: int) -> Copy | None:
        """At most min(cap, max_tokens) tokens; None when the last n-gram never occurred
        before."""
        a = transcript.view()
        limit = min(cap, self.max_tokens)
        starts = occurrences(a, self.ngram) if limit > 0 else EMPTY
        if not len(starts):
            return None
        first = int(starts[-1]) + self.ngram
        return Copy(a[first: first + limit], source=first)


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


@register("lookup-tree", NGRAM,
          Param("nodes", int, DEFAULT_TREE_NODES, "most tree nodes", low=1, high=MAX_BRANCHES,
                limit="max_copy"), kind="proposer",
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

    def propose(self, transcript: Transcript, cap: int) -> Copy | None:
        a = transcript.view()
        depth = min(cap, self.nodes)
        starts = occurrences(a, self.ngram) if depth > 0 else EMPTY
        if not len(starts):
            return None
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
        new = {old: n for n, old in enumerate(keep)}
        return Copy([tokens[i] for i in keep],
                    [-1 if parents[i] < 0 else new[parents[i]] for i in keep])


MIN_MATCH = 3  # the shortest match `auto` considers (its model prices short ones low)


class Copier:
    """`auto`'s copy source, for one generation: the continuation of the chain it is
    copying while the text keeps following it, else the earlier occurrence with the longest
    match of the context's end (the most recent of equals), with the evidence the copy
    acceptance model reads (`calibration.copies`). Bench traces run the same rules."""

    __slots__ = ("min_match", "_src", "_evidence", "_breaks", "_followed", "_edits")

    def __init__(self, min_match: int = MIN_MATCH) -> None:
        self.min_match = min_match
        self._src = -1  # where the chain's next token lies in the transcript (-1: none)
        self._evidence: CopyEvidence | None = None
        # This reply's chains so far: how often the text left one, and how many tokens
        # followed one (a rename breaks every chain at each use of the old name); per token
        # a chain expected where the text left it: [times replaced, times passed since].
        self._breaks = self._followed = 0
        self._edits: dict[int, list[int]] = {}

    def _hazard(self) -> float:
        """How often this reply leaves the text it copies, per token (smoothed)."""
        return (self._breaks + 1) / (self._followed + 16)

    def find(self, transcript: Transcript, cap: int) -> Copy | None:
        """Up to `cap` tokens to copy after the transcript's end, or None."""
        a = transcript.view()
        if cap <= 0:
            return None
        if self._src < 0 or self._evidence is None:
            found = longest_match(a, self.min_match)
            if found is None:
                return None
            self._src, self._evidence = found[0], CopyEvidence(
                found[1], 0, found[2], found[3], transcript.source_at(found[0]),
                self._hazard())
        tokens = a[self._src: self._src + cap]
        if not len(tokens):  # the chain reached the end of the text
            self.reset()
            return self.find(transcript, cap)
        evidence = self._evidence
        if self._edits:
            counts = np.zeros((len(tokens), 2))
            for j, t in enumerate(tokens.tolist()):
                seen = self._edits.get(t)
                if seen is not None:
                    counts[j] = seen
            evidence = replace(evidence, edits=counts)
        return Copy(tokens, evidence=evidence, source=self._src)

    def advance(self, transcript: Transcript, emitted: int) -> None:
        """After a round appended `emitted` tokens: the chain goes on where they are the
        text it was copying (by any round: a copy, a draft, the target alone), else it
        ends and the next round searches afresh."""
        if self._src < 0 or self._evidence is None:
            return
        if emitted <= 0:  # a round's forced tokens were rejected: the copy after them was
            self.reset()  # never tested, and the chain's place is lost
            return
        a, n = transcript.tokens, transcript.length
        src = self._src
        same = a[src: src + emitted] == a[n - emitted: n]
        followed = emitted if same.all() else int(np.argmin(same))
        self._followed += followed
        if self._edits:
            for t in a[src: src + followed].tolist():
                if t in self._edits:
                    self._edits[t][1] += 1
        if followed == emitted:
            ev = self._evidence
            self._src = src + emitted
            self._evidence = CopyEvidence(ev.match + emitted, ev.depth + emitted, ev.support,
                                          ev.dissent, ev.source, self._hazard())
        else:
            self._breaks += 1
            self._edits.setdefault(int(a[src + followed]), [0, 0])[0] += 1
            self.reset()

    def reset(self) -> None:
        self._src, self._evidence = -1, None


def longest_match(a: npt.NDArray[np.int32], min_match: int
                  ) -> tuple[int, int, int, int] | None:
    """The earlier occurrence of a's end with the longest match (at least `min_match`
    tokens, counted up to MAX_MATCH; the most recent of equals): (where its continuation
    starts, the match's length, occurrences continuing with that token, occurrences
    continuing otherwise); None without one."""
    starts = occurrences(a, min_match)
    if not len(starts):
        return None
    n = len(a)
    length = np.full(len(starts), min_match)
    alive = np.ones(len(starts), bool)
    # Grow every match backwards one token at a time while any still agrees.
    for size in range(min_match, min(MAX_MATCH, n - 1)):
        before = starts + min_match - size - 1
        alive &= before >= 0
        alive[alive] = a[before[alive]] == a[n - size - 1]
        if not alive.any():
            break
        length += alive
    best = int(np.flatnonzero(length == length.max())[-1])
    src = int(starts[best]) + min_match
    follow = a[starts + min_match]
    support = int((follow == a[src]).sum())
    return src, int(length[best]), support, len(starts) - support
