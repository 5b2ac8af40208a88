"""Token choice from logits: greedy, truncated sampling, and speculative rejection sampling.

Everything works on numpy views of llama.cpp's logits over the whole vocabulary, so the draft
and target distributions p and q are processed by the SAME function, which is what makes
rejection sampling exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from svip_local.errors import InvalidRequestError

MAX_SEED = 2**64 - 1  # numpy's generators take any non-negative integer; keep it one word
Logits = npt.NDArray[np.float32]
Probs = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SamplingParams:
    """Temperature 0 means greedy. Truncation follows llama.cpp's order: top-k, top-p, min-p on
    the untempered distribution, then temperature over the survivors."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise InvalidRequestError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidRequestError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise InvalidRequestError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed <= MAX_SEED):
            raise InvalidRequestError(
                f"seed must be a whole number from 0 to 2**64 - 1 (or none), got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def distribution(logits: Logits, params: SamplingParams) -> Probs:
    """The probabilities `params` sample from, dense over the vocabulary (zeros outside the
    kept set). A fresh float64 array: callers may keep it across decodes."""
    x = logits.astype(np.float64)
    keep = np.ones(x.shape[0], dtype=bool)
    if 0 < params.top_k < x.shape[0]:
        kth = np.argpartition(-x, params.top_k - 1)[: params.top_k]
        keep[:] = False
        keep[kth] = True
    if params.top_p < 1.0 or params.min_p > 0.0:
        base = np.where(keep, np.exp(x - x[keep].max()), 0.0)
        base /= base.sum()
        if params.top_p < 1.0:
            order = np.argsort(-base, kind="stable")
            cum = np.cumsum(base[order])
            # Keep the smallest prefix whose mass reaches top_p (at least one token).
            n_keep = int(np.searchsorted(cum, params.top_p, side="left")) + 1
            keep[:] = False
            keep[order[:n_keep]] = True
        if params.min_p > 0.0:
            keep &= base >= params.min_p * base.max()
    y = np.where(keep, x / params.temperature, -np.inf)
    y -= y.max()
    p = np.exp(y)
    p /= p.sum()
    return p


def sample(probs: Probs, rng: np.random.Generator) -> int:
    """Inverse-CDF draw: one pass, far cheaper than rng.choice over 150k entries."""
    cdf = np.cumsum(probs)
    idx = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(idx, int(probs.shape[0]) - 1)


def acceptance_chance(p: Probs, q: Probs | None, token: int) -> float:
    """min(1, p(x)/q(x)): the chance `verify_candidates` accepts draft token x (p(x) for a copied
    one). Its mean over x ~ q is the position's acceptance rate, so learning from it instead
    of the accept/reject outcome estimates that rate with less noise."""
    px = float(p[token])
    qx = 1.0 if q is None else float(q[token])
    return 1.0 if qx <= 0 else min(1.0, px / qx)


def residual(p: Probs, q: Probs | None, token: int) -> Probs:
    """What p leaves for the next candidate once `token` was rejected, normalised: norm(max(0,
    p - q)) for a token drafted from q, p without the token for a certain one (q None)."""
    if q is None:
        rest = p.copy()
        rest[token] = 0.0
    else:
        rest = np.maximum(p - q, 0.0)
    total = rest.sum()
    if total <= 0:  # p == q up to rounding: any draw from p is exact
        return p
    rest /= total
    return rest


def verify_candidates(p: Probs, tokens: Sequence[int], qs: Sequence[Probs | None],
                      rng: np.random.Generator) -> tuple[int, int]:
    """Speculative rejection sampling over one tree node's children (Leviathan et al. 2023;
    SpecInfer's recursive form for several): candidate x, drafted from q, is accepted with
    probability min(1, p(x)/q(x)); a certain one (q None: a copy, a top-k alternative) with
    p(x). After a rejection p becomes `residual(p, q, x)` for the next candidate, and when all
    are rejected the token is drawn from what is left: the output is exactly p.

    Returns (index of the accepted candidate, its token), or (-1, the token drawn instead).
    """
    for i, (x, q) in enumerate(zip(tokens, qs, strict=True)):
        qx = 1.0 if q is None else q[x]
        if qx <= 0 or rng.random() * qx < p[x]:  # u < p/q without dividing
            return i, x
        p = residual(p, q, x)
    return -1, sample(p, rng)
