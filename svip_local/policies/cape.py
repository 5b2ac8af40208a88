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
`cape-cost` sizes the tree from this machine's batch costs instead of fixed bins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from svip_local.calibration.costs import MAX_TREE_VERIFY, CostModel
from svip_local.errors import InvalidRequestError
from svip_local.policies.base import Option
from svip_local.policies.table import Param, PolicyContext, PolicyEntry, register
from svip_local.tree import MAX_CANDIDATES, TokenTree

# (top-1 probability below, candidates at that depth, the chain's token included); the widest
# is tree.MAX_CANDIDATES, what the round reads and traces record.
WIDTH_BINS = ((0.3, 8), (0.6, 6), (0.8, 4))
CONFIDENT_WIDTH = 2
DEFAULT_NODES = 16


@register("cape", Param("nodes", int, DEFAULT_NODES, "most tree nodes, the chain included", low=1,
                          high=64),
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
        for depth, (ids, _, width) in enumerate(options):
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



@register("cape-cost", Param("R", float, None, "tokens/s a leaf's expected tokens must beat "
                                               "(default: the calibrated rate)", fmt=".4g",
                             low=0),
          kind="expander",
          rule="+cape-cost: CaPE priced on this machine: the draft's alternatives, most likely "
               "first, become leaves only while a leaf's expected tokens pay for its row of "
               "the verification batch (needs `svip-local calibrate`)",
          label="CaPE, cost-aware", grid=(), needs_calibration=True)
class CostAwareCape:
    """A leaf y at depth d is worth P(the chain is accepted up to d - 1) * P(the target picks
    y at d) tokens, both estimated by the draft's own probabilities (the chain's tokens',
    then y's: the value Sequoia and SpecInfer grow trees by); it costs the verification row
    it adds, verify(n + 1) - verify(n) seconds on this machine, a price in tokens at the rate R
    (svip-cost's). Leaves are added best first while they pay, up to MAX_NODES: wide where
    a batch row is nearly free (a GPU), narrow or none where it costs almost a decode. The
    live `auto` re-prices it every drafting round (`price`) from what it measures."""

    MAX_NODES = MAX_TREE_VERIFY - 1

    entry: ClassVar[PolicyEntry]

    def __init__(self, verify: Sequence[float], rate: float) -> None:
        self._priced: Sequence[float] = ()
        self._row: list[float] = []
        self.price(verify, rate)

    @classmethod
    def from_costs(cls, costs: CostModel, rate: float) -> CostAwareCape:
        """Priced by a calibration's cost model, at its depth."""
        d = costs.base_depth
        return cls([costs.verify(b, d) for b in range(1, cls.MAX_NODES + 2)], rate)

    def price(self, verify: Sequence[float], rate: float) -> None:
        """`verify[b-1]`: seconds to verify b rows (b up to MAX_NODES + 1); R in tokens/s."""
        if not rate > 0:
            raise InvalidRequestError(f"cape-cost rate must be positive tokens/s, got {rate}")
        if len(verify) < self.MAX_NODES + 1:
            raise ValueError(f"cape-cost needs verification times up to {self.MAX_NODES + 1} "
                             f"rows, got {len(verify)}")
        self.rate = rate
        if verify is not self._priced:  # the live table is rebuilt only after a verification
            self._priced = verify
            # row[n]: the extra seconds of verifying the (n+1)-th node, beside the root.
            self._row = [max(0.0, b - a) for a, b in zip(verify, verify[1:], strict=False)]

    @classmethod
    def build(cls, args: tuple[Any, ...], context: PolicyContext) -> CostAwareCape:
        cal = context.calibration() if context.has_draft else None
        if cal is None:
            raise InvalidRequestError(
                "cape-cost needs this machine's costs for this pair: run `svip-local "
                "calibrate` first (with the same files, threads and GPU offload)")
        (rate,) = args
        return cls.from_costs(cal.costs, rate or cal.greedy.cost_rate)

    @property
    def name(self) -> str:
        return self.entry.spec((self.rate,))

    @staticmethod
    def width(top_prob: float) -> int:
        return MAX_CANDIDATES

    def expand(self, tree: TokenTree, options: Sequence[Option]) -> None:
        chain = len(tree)
        leaves: list[tuple[float, int, int]] = []  # (expected tokens, parent, token)
        reach = 1.0
        for depth, (ids, probs, _) in enumerate(options):
            taken = tree.tokens[depth] if depth < chain else -1
            kept = 0.0
            for t, p in zip(ids.tolist(), probs.tolist(), strict=True):
                if t == taken:
                    kept = p
                else:
                    leaves.append((reach * p, depth - 1, t))
            reach *= kept
            if reach <= 0.0:
                break
        leaves.sort(reverse=True)
        for value, parent, token in leaves:
            n = len(tree)
            if n >= self.MAX_NODES or value < self.rate * self._row[n]:
                break
            tree.add(token, parent)
