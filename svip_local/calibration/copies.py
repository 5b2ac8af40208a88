"""How likely a copied token is right, from the evidence its match carries.

A copy (prompt lookup) continues the text that followed an earlier occurrence of the
context's last tokens. A running mean of how often copies were accepted treats every match
alike; but a 40-token match inside code the user pasted is nearly always right, and a 3-token
match in a math answer nearly never. So the chance that copied token j is accepted, given the
tokens before it were, is a logistic model of that evidence:

    P(accept j | accepted < j) = sigmoid(w . x_j)

with x_j: the matched suffix's length (grows by one per accepted token), whether j continues
a chain of accepted copied tokens (this round's, or earlier rounds' copies of the same text
accepted to their end) and how long that chain is, how many earlier occurrences agree on the
continuation and whether any disagree, how often this reply has left the text it copied
(a rename leaves it at each use of the old name) and whether it replaced token j there
before (the old name itself: the chain's features do not count there), and where the
copied text lies (`transcript.SOURCES`).
The weights carry a Gaussian belief (mean and diagonal precision): calibration fits them on
traces, and every copy round updates them (the online Laplace update of Chapelle & Li 2011,
"An Empirical Evaluation of Thompson Sampling"), with the precision capped so that old text
fades. Labels may be chances (sampled
generation: the rejection test's acceptance chance) as well as outcomes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from svip_local.transcript import SOURCES

FEATURES = ("bias", "match", "continuing", "depth", "support", "dissent", "hazard", "edited",
            *(f"from {s}" for s in SOURCES[1:]))
N_FEATURES = len(FEATURES)
MAX_MATCH = 64  # matched-suffix lengths beyond this count as this
PRECISION_CAP = 60.0  # the most a weight's precision grows to: old evidence fades
NEWTON_STEPS = 3


@dataclass(frozen=True, slots=True)
class CopyEvidence:
    """What a copy's match says about it (see the module docstring)."""

    match: int  # tokens of the context's end that matched before the copied text
    depth: int = 0  # tokens of this chain accepted in earlier rounds (0: a fresh match)
    support: int = 1  # earlier occurrences continuing with the same token (this one included)
    dissent: int = 0  # earlier occurrences continuing with another token
    source: str = "prompt"  # where the copied text lies (`transcript.SOURCES`)
    # How often this reply has left the text it was copying, per token followed (smoothed:
    # 1/16 before any copy): a rename breaks every chain at each use of the old name.
    hazard: float = 1 / 16
    # Per copied token: how often this reply replaced that token where a chain expected it,
    # and how often a chain passed it since, as rows (replaced, passed): the old name of a
    # renamed identifier is replaced at every use.
    edits: npt.NDArray[np.float64] | None = field(default=None, compare=False)


def features(evidence: CopyEvidence, n: int, out: npt.NDArray[np.float64] | None = None
             ) -> npt.NDArray[np.float64]:
    """x_j for copied tokens j = 1..n, as rows (into `out` when given, at least n rows)."""
    x = np.zeros((n, N_FEATURES)) if out is None else out[:n]
    step = np.arange(n, dtype=np.float64)
    depth = step + evidence.depth
    x[:, 0] = 1.0
    x[:, 1] = np.log2(np.minimum(evidence.match + step, MAX_MATCH)) / 6.0
    x[:, 2] = depth > 0
    x[:, 3] = np.log2(np.minimum(depth, MAX_MATCH) + 1.0) / 6.0
    x[:, 4] = math.log2(min(max(evidence.support, 1), MAX_MATCH)) / 6.0
    x[:, 5] = evidence.dissent > 0
    x[:, 6] = math.log(min(max(evidence.hazard, 1e-4), 1.0)) / 3.0 + 1.0
    if evidence.edits is not None:
        x[:, 7] = edit_odds(evidence.edits[:n])
        # A chain vouches for the text around an edit, not for the edit repeating: a deep
        # chain's confidence must not outweigh a token the reply kept replacing.
        x[x[:, 7] > 0, 1:4] = 0.0
    else:
        x[:, 7] = 0.0
    x[:, 8:] = 0.0
    s = SOURCES.index(evidence.source)
    if s:
        x[:, 7 + s] = 1.0
    return x


def edit_odds(counts: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The log-odds ln((replaced + 1) / (passed + 1)) that a token is replaced again, 0
    where it was passed as often as replaced: each replacement weighs more than the last."""
    return np.maximum(0.0, np.log((counts[:, 0] + 1.0) / (counts[:, 1] + 1.0)))


def _sigmoid(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


@dataclass
class CopyModel:
    """The belief about the weights: mean and diagonal precision (see the module)."""

    weights: list[float]
    precision: list[float]

    def __post_init__(self) -> None:
        if len(self.weights) != N_FEATURES or len(self.precision) != N_FEATURES:
            raise ValueError(f"a copy model has {N_FEATURES} weights and precisions")
        w, q = np.asarray(self.weights, float), np.asarray(self.precision, float)
        if not (np.isfinite(w).all() and np.isfinite(q).all()) or (q <= 0).any() \
                or np.abs(w).max() > 100:
            raise ValueError("copy model weights must be finite (|w| <= 100) and precisions "
                             "positive")
        self._w, self._q = w, q
        self._x = np.zeros((MAX_MATCH + 1, N_FEATURES))  # rows reused by `chances`

    def chances(self, evidence: CopyEvidence, n: int) -> npt.NDArray[np.float64]:
        """P(copied token j accepted | the ones before it were), j = 1..n."""
        if n > len(self._x):
            self._x = np.zeros((n, N_FEATURES))
        return _sigmoid(features(evidence, n, self._x) @ self._w)

    def observe(self, evidence: CopyEvidence, outcomes: Sequence[float]) -> None:
        """One copy round: outcomes[j] for each tested token j (1 accepted, 0 rejected, or
        the acceptance chance); the tokens after the first rejection were not tested."""
        if outcomes:
            self._update(features(evidence, len(outcomes)), np.asarray(outcomes, float))

    def _update(self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> None:
        """MAP under the current belief (Newton), then the precision grows by the data's
        curvature, capped."""
        m, q = self._w, self._q
        w = m.copy()
        for _ in range(NEWTON_STEPS):
            p = _sigmoid(x @ w)
            grad = q * (w - m) + x.T @ (p - y)
            hess = np.diag(q) + (x.T * (p * (1 - p))) @ x
            w -= np.linalg.solve(hess, grad)
        p = _sigmoid(x @ w)
        self._w = w
        self._q = np.minimum(q + (x * x).T @ (p * (1 - p)), PRECISION_CAP)
        self.weights, self.precision = w.tolist(), self._q.tolist()

    @classmethod
    def fit(cls, prior: CopyModel, examples: Sequence[tuple[CopyEvidence, Sequence[float]]]
            ) -> CopyModel:
        """The belief after all `examples` (copy rounds, or single positions of a trace) at
        once, from `prior`."""
        out = cls(list(prior.weights), list(prior.precision))
        if examples:
            out._update(np.concatenate([features(ev, len(ys)) for ev, ys in examples]),
                        np.concatenate([np.asarray(ys, float) for _, ys in examples]))
        return out

    def copy(self) -> CopyModel:
        return CopyModel(list(self.weights), list(self.precision))

    def to_dict(self) -> dict[str, Any]:
        return {"weights": list(self.weights), "precision": list(self.precision)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CopyModel:
        return cls([float(v) for v in data["weights"]], [float(v) for v in data["precision"]])


# Before anything was observed: fitted on the reference pair's traces at each temperature
# (24 SpecBench prompts and the 12 `code-edit-calibration` conversations, never benchmarked;
# `scripts/fit_copy_prior.py`: held-out log-loss 0.216 greedy / 0.252 sampled, against
# 0.305 / 0.356 for one acceptance rate), with the precision of a few dozen copied tokens, so
# that this text's own rounds soon count more. No trace holds text seen before the prompt:
# it starts priced as an earlier reply.
_PRIOR_GREEDY = (0.735, 1.263, -0.011, 2.287, 0.375, -0.918, -0.165, -0.325, 0.040, 0.200,
                 -0.385, 0.200)
_PRIOR_SAMPLED = (0.523, 1.035, 0.039, 2.277, 0.235, -0.897, -0.214, -0.562, 0.244, 0.573,
                  -0.433, 0.573)
PRIOR_PRECISION = 4.0


def prior_copy_model(temperature: float) -> CopyModel:
    """The copy model a first run starts from at this temperature."""
    w = _PRIOR_GREEDY if temperature <= 0 else _PRIOR_SAMPLED
    return CopyModel(list(w), [PRIOR_PRECISION] * N_FEATURES)
