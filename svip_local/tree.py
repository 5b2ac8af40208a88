"""A round's proposal as a token tree, and how it lies in one verification batch.

Node i holds a token and its parent (-1: the root, the last accepted token, which the batch
decodes first); parents come before their children, so any prefix of the nodes is a tree
too (that is how a tree is pruned to the room left). A drafted node carries the draft's
distribution q it was sampled from; a deterministic one (a copied token, a top-k
alternative) carries none. A chain is the tree whose node i has parent i - 1: it verifies
in sequence 0 alone, exactly as before trees.

In the batch every root-to-leaf branch is one sequence id: a node lies on the sequences of
every branch through it, so the shared part of two branches is decoded once, and each node
attends to its own ancestors only (`native.Context.decode_tree`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from svip_local.sampling import Probs

MAX_CANDIDATES = 8  # a draft step's best tokens an expander may choose from


def top_candidates(dist: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.intp]:
    """The MAX_CANDIDATES largest entries of `dist` (logits or probabilities), best first."""
    top = np.argpartition(dist, -MAX_CANDIDATES)[-MAX_CANDIDATES:]
    return top[np.argsort(-dist[top], kind="stable")]


class TokenTree:
    """Reused round after round (`clear`): the lists keep their storage."""

    __slots__ = ("tokens", "parents", "qs", "depths", "_first_child", "_next_sibling")

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.qs: list[Probs | None] = []
        self.depths: list[int] = []  # 1 for the root's children
        self._first_child: list[int] = []
        self._next_sibling: list[int] = []
        self.clear()

    def clear(self) -> None:
        """Empty it; the root's first child is kept at index 0 of `_first_child` (node i's
        at i + 1), so the root is node -1 everywhere."""
        for lst in (self.tokens, self.parents, self.qs, self.depths, self._next_sibling):
            lst.clear()
        self._first_child.clear()
        self._first_child.append(-1)

    @classmethod
    def chain(cls, tokens: Sequence[int], qs: Sequence[Probs | None] = ()) -> TokenTree:
        tree = cls()
        tree.extend_chain(tokens, qs)
        return tree

    def extend_chain(self, tokens: Sequence[int], qs: Sequence[Probs | None] = ()) -> None:
        """Append `tokens` as a chain below the last node (below the root when empty)."""
        for i, t in enumerate(tokens):
            self.add(t, len(self.tokens) - 1, qs[i] if i < len(qs) else None)

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, token: int, parent: int, q: Probs | None = None) -> int:
        """Append a node as the LAST child of `parent` (-1: the root); children are tried in
        the order they were added. Returns its index."""
        i = len(self.tokens)
        self.tokens.append(token)
        self.parents.append(parent)
        self.qs.append(q)
        self.depths.append(1 if parent < 0 else self.depths[parent] + 1)
        self._first_child.append(-1)
        self._next_sibling.append(-1)
        c = self._first_child[parent + 1]
        if c < 0:
            self._first_child[parent + 1] = i
        else:
            while self._next_sibling[c] >= 0:
                c = self._next_sibling[c]
            self._next_sibling[c] = i
        return i

    def children(self, node: int) -> list[int]:
        """Children of `node` (-1: the root), in the order they are tried."""
        out, c = [], self._first_child[node + 1]
        while c >= 0:
            out.append(c)
            c = self._next_sibling[c]
        return out

    def child_with(self, node: int, token: int) -> int:
        """The child of `node` that holds `token`, -1 if none: a greedy step down the tree."""
        c = self._first_child[node + 1]
        while c >= 0 and self.tokens[c] != token:
            c = self._next_sibling[c]
        return c

    def path(self, node: int) -> list[int]:
        """Nodes from the root's child down to `node` ([] for the root)."""
        out = []
        while node >= 0:
            out.append(node)
            node = self.parents[node]
        return out[::-1]

    def chain_below(self, node: int) -> list[int]:
        """`node`'s path, continued through first children to a leaf: the branch a round
        that stopped at `node` reports as its proposal."""
        out = self.path(node)
        c = self._first_child[node + 1]
        while c >= 0:
            out.append(c)
            c = self._first_child[c + 1]
        return out

    def prune(self, max_nodes: int, max_depth: int) -> None:
        """Keep the first `max_nodes` nodes no deeper than `max_depth` (the context's free
        cells, the generation's remaining budget). Dropping a node drops its subtree."""
        keep = [i for i in range(min(len(self), max_nodes)) if self.depths[i] <= max_depth]
        if len(keep) == len(self):
            return
        # A kept node's parent is kept too: it comes earlier and is shallower.
        nodes = [(self.tokens[i], self.parents[i], self.qs[i]) for i in keep]
        index = {old: new for new, old in enumerate(keep)}
        self.clear()
        for t, p, q in nodes:
            self.add(t, -1 if p < 0 else index[p], q)

    def layout(self) -> tuple[list[int], list[list[int]], int]:
        """The batch rows of [root] + nodes: depth (the root: 0), sequence ids, and the
        number of branches. Branch b ends at the b-th leaf; a chain is one branch, 0."""
        n = len(self)
        is_leaf = [True] * n
        for p in self.parents:
            if p >= 0:
                is_leaf[p] = False
        seqs: list[list[int]] = [[] for _ in range(n + 1)]
        b = 0
        for leaf in range(n):
            if is_leaf[leaf]:
                node = leaf
                while node >= 0:
                    seqs[node + 1].append(b)
                    node = self.parents[node]
                b += 1
        branches = max(b, 1)
        seqs[0] = list(range(branches))
        for ids in seqs[1:]:
            ids.sort()
        return [0, *self.depths], seqs, branches
