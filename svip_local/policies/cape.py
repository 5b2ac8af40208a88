"""CaPE: the draft's chain widened into a token tree by its own top-k alternatives.

Confidence-aware Proposal Expansion ("GliDe with a CaPE", Du et al. 2024, arXiv 2402.02082):
at each depth of the drafted chain, the draft's next most likely tokens become extra leaves,
more of them where the draft is unsure (GliDe's published bins on the top-1 probability:
below 0.3 eight candidates, below 0.6 six, below 0.8 four, else two, the chain's token
included). Where the target rejects the chain's token at some depth it often picks one of
those, and the round gains that token and the bonus after it. The leaves cost no draft step,
only rows in the one verification batch, which is far cheaper per token than single decodes
(`svip-local calibrate` measures how much on this machine). The length policy still decides
how deep the chain goes; the node budget bounds the whole tree, and shallow depths are
served first (each is reached more often than the next).

Unlike GliDe it needs no draft trained on the target's KV cache: any GGUF draft will do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from svip_local.errors import InvalidRequestError
from svip_local.policies.base import Option
from svip_local.policies.table import Param, PolicyContext, PolicyEntry, register
from svip_local.tree import TokenTree

# (top-1 probability below, candidates at that depth, the chain's token included); the widest
# is tree.MAX_CANDIDATES, what the round reads and traces record.
WIDTH_BINS = ((0.3, 8), (0.6, 6), (0.8, 4))
CONFIDENT_WIDTH = 2
DEFAULT_NODES = 16


@register("cape", Param("nodes", int, DEFAULT_NODES, "most tree nodes, the chain included"),
          kind="expander",
          rule="+cape: at each depth of POLICY's chain add the draft's next most likely "
               "tokens as leaves (8 where its top-1 probability is below 0.3, 6 below 0.6, "
               "4 below 0.8, else 2, the chain's included), up to `nodes` in the tree",
          label="CaPE {nodes}", grid=[(8,), (16,), (32,)])
@dataclass(frozen=True)
class Cape:
    nodes: int = DEFAULT_NODES

    entry: ClassVar[PolicyEntry]

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise InvalidRequestError(f"cape's node budget must be >= 1, got {self.nodes}")

    @classmethod
    def build(cls, args: tuple[Any, ...], context: PolicyContext) -> Cape:
        return cls(*args)

    @property
    def name(self) -> str:
        return self.entry.spec((self.nodes,))

    @staticmethod
    def width(top_prob: float) -> int:
        for below, width in WIDTH_BINS:
            if top_prob < below:
                return width
        return CONFIDENT_WIDTH

    def expand(self, tree: TokenTree, options: Sequence[Option]) -> None:
        chain = len(tree)
        for depth, (ids, width) in enumerate(options):
            taken = tree.tokens[depth] if depth < chain else -1
            offered = 1 if depth < chain else 0  # the chain's own token counts
            for t in ids:
                if offered >= width:
                    break
                if len(tree) >= self.nodes:
                    return
                if t != taken:
                    tree.add(int(t), depth - 1)
                    offered += 1

