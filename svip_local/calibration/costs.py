"""What each step of the speculative loop costs on this machine, for this pair: the model the
simulator and cost-aware SVIP price rounds with. It is measured by `svip_local.bench.costs`.

The tables hold a target verification of b tokens (all logits), a draft decode of n tokens
(last logits), the per-step Python work (argmax, entropy), prefill, how decode cost grows with
the context, and the fixed per-round and per-token work of the loop itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

MAX_VERIFY = 17  # 1 + the default max draft of 16
# Token trees verify more: calibration measures up to this many rows (a root and 32 nodes),
# and copies up to 1 + the default max copy of 64; sampled more sparsely past MAX_VERIFY and
# interpolated between.
MAX_TREE_VERIFY = 33
MAX_COPY_VERIFY = 65
TREE_VERIFY_SIZES = (21, 25, 29, MAX_TREE_VERIFY, 41, 49, 57, MAX_COPY_VERIFY)


@dataclass(frozen=True)
class CostModel:
    """Seconds per operation. Tables are measured at context depth `base_depth`; a decode at
    another depth adds `*_depth_s` per batch row per token of context (attention work)."""

    verify_s: tuple[float, ...]  # target decode of b = 1, 2, ... tokens, all logits
    draft_s: tuple[float, ...]  # draft decode of n = 1, 2, ... tokens, last logits
    argmax_s: float  # one argmax over the vocabulary (a draft step, a verified row)
    entropy_s: float  # entropy + top-1 probability of one draft step
    target_prefill_s: tuple[float, float, float]  # (a, b, c): a + b*n + c*n² for n tokens
    draft_prefill_s: tuple[float, float, float]
    target_depth_s: float
    draft_depth_s: float
    base_depth: int
    round_s: float = 0.0  # the loop's own work per round,
    token_s: float = 0.0  # per emitted token (events, detokenizing)
    step_s: float = 0.0  # and per draft step (logits view, policy), beyond argmax and entropy
    # A sampled step or row replaces the argmax by a distribution and a draw (0: not measured).
    sample_s: float = 0.0

    def verify(self, b: int, depth: int) -> float:
        return _table(self.verify_s, b) + self._depth(self.target_depth_s, b, depth)

    def draft(self, n: int, depth: int) -> float:
        """n draft tokens in one decode on top of `depth` cached tokens: the table for the
        usual 1-2 token catch-up, the prefill line for a prompt."""
        if n <= len(self.draft_s):
            return _table(self.draft_s, n) + self._depth(self.draft_depth_s, n, depth)
        return _prefill(self.draft_prefill_s, n, depth)

    def target_prefill(self, n: int) -> float:
        return _prefill(self.target_prefill_s, n, 0) if n > 0 else 0.0

    def _depth(self, slope: float, rows: int, depth: int) -> float:
        return slope * rows * (depth - self.base_depth)

    def with_overhead(self, round_s: float, token_s: float, step_s: float) -> CostModel:
        return replace(self, round_s=round_s, token_s=token_s, step_s=step_s)

    def at_temperature(self, temperature: float) -> CostModel:
        """The costs of a generation at `temperature`: each token read from logits is a
        distribution and a draw instead of an argmax when sampling."""
        if temperature <= 0 or self.sample_s <= 0:
            return self
        return replace(self, argmax_s=self.sample_s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostModel:
        fields = dict(data)
        for key in ("verify_s", "draft_s", "target_prefill_s", "draft_prefill_s"):
            fields[key] = tuple(float(x) for x in fields[key])
        if len(fields["target_prefill_s"]) != 3 or len(fields["draft_prefill_s"]) != 3 \
                or len(fields["verify_s"]) < 2 or not fields["draft_s"]:
            raise ValueError("cost model tables have the wrong shape")
        out = cls(**fields)
        times = [*out.verify_s, *out.draft_s, out.argmax_s, out.entropy_s, out.round_s,
                 out.token_s, out.step_s, out.sample_s]
        if not all(math.isfinite(t) and 0 <= t < 1e3 for t in times) or out.verify_s[0] <= 0:
            raise ValueError("cost model times must be finite, non-negative seconds")
        return out


def _table(values: Sequence[float], n: int) -> float:
    """values[n-1], extended past the table along its last slope."""
    if n <= len(values):
        return values[n - 1]
    slope = values[-1] - values[-2] if len(values) > 1 else values[-1]
    return values[-1] + slope * (n - len(values))


def _prefill(curve: Sequence[float], n: int, depth: int) -> float:
    # c*n² is the batch's attention over itself; on top of `depth` cached tokens each of the
    # n rows also attends to those: c*((n + depth)² - depth²) in all.
    a, b, c = curve
    return a + b * n + c * (n * n + 2 * n * depth)



def nondecreasing(values: Sequence[float], weights: Sequence[float] | None = None
                  ) -> list[float]:
    """Weighted least-squares non-decreasing fit (pool adjacent violators): a noise spike is
    averaged with its neighbours instead of raising everything after it."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, w in zip(values, weights or [1.0] * len(values), strict=True):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return [b[0] for b in blocks for _ in range(int(b[2]))]
