"""Draft-length policies: after each draft step, keep drafting, stop, or stop and drop the token.

Each policy sees the draft step's statistics (entropy in nats over the whole vocabulary of the
raw draft logits, and the top-1 probability) and the outcome of each verification. Rules,
defaults and sources: ../shared/reference/policies.md (SVIP: Geralt-Targaryen/SVIP
`eval_specbench.py`; heuristic: transformers' assisted generation as the SVIP code runs it;
pmin: llama.cpp common/speculative.cpp; AdaEDL: arXiv 2410.18351).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

from svip_local.errors import InvalidRequestError
from svip_local.lookup import PromptLookup, split_lookup
from svip_local.sampling import SamplingParams

DEFAULT_MAX_DRAFT = 16


class Verdict(Enum):
    CONTINUE = "continue"
    STOP = "stop"  # keep this token, draft no more (SVIP, AdaEDL: keep-then-stop)
    DROP = "drop"  # discard this token and stop (llama.cpp p_min: drop-and-stop)


@dataclass(frozen=True, slots=True)
class StepStats:
    """What a policy may look at after a draft step; fields a policy did not ask for are nan."""

    n_drafted: int  # draft tokens so far in this round, this one included
    entropy: float
    top_prob: float


class DraftPolicy(ABC):
    """One policy instance lives as long as its engine: adaptive ones learn across calls."""

    name: str = ""
    wants_entropy = False
    wants_top_prob = False

    def round_limit(self) -> int:
        """Upper bound on this round's draft length (the engine also caps it by budget)."""
        return DEFAULT_MAX_DRAFT

    def start(self, sampling: SamplingParams) -> None:  # noqa: B027 (optional hook)
        """A generation begins with these sampling settings."""

    def propose(self, context: Sequence[int] | np.ndarray, cap: int) -> list[int]:
        """Tokens to verify this round without asking the draft model (none: draft as usual).
        `context` is everything before the round (prompt and generated tokens)."""
        return []

    @abstractmethod
    def judge(self, step: StepStats) -> Verdict: ...

    def observe(self, drafted: int, accepted: int) -> None:  # noqa: B027 (optional hook)
        """Verification outcome of the round: `accepted` of `drafted` tokens matched."""

    def describe(self) -> str:
        return self.name


class NoDraft(DraftPolicy):
    """Target alone: the baseline, and what `auto` picks where speculation cannot pay."""

    name = "none"

    def round_limit(self) -> int:
        return 0

    def judge(self, step: StepStats) -> Verdict:
        return Verdict.STOP


class Constant(DraftPolicy):
    """Always k tokens (the SVIP paper's baseline used k = 5)."""

    def __init__(self, k: int = 5) -> None:
        if k < 1:
            raise InvalidRequestError(f"constant draft length must be >= 1, got {k}")
        self.k = k
        self.name = f"constant:{k}"

    def round_limit(self) -> int:
        return self.k

    def judge(self, step: StepStats) -> Verdict:
        return Verdict.CONTINUE


class Heuristic(DraftPolicy):
    """Hugging Face's schedule as SVIP's code runs it: start at 5, +2 after a round whose every
    scheduled token was accepted, -1 otherwise, floor 1, cap 40 (and our max draft)."""

    name = "heuristic"

    def __init__(self, start: int = 5, max_draft: int = DEFAULT_MAX_DRAFT) -> None:
        self.schedule = start
        self.max_draft = max_draft

    def round_limit(self) -> int:
        return min(self.schedule, self.max_draft)

    def judge(self, step: StepStats) -> Verdict:
        return Verdict.CONTINUE

    def observe(self, drafted: int, accepted: int) -> None:
        # SVIP's code compares with the scheduled length, not the drafted one.
        if accepted >= self.schedule:
            self.schedule = min(self.schedule + 2, 40)
        else:
            self.schedule = max(1, self.schedule - 1)


class Svip(DraftPolicy):
    """SVIP: keep the token, then stop if sqrt(0.15 * H) > h (H in nats; h = 0.3: H > 0.6)."""

    wants_entropy = True
    GAMMA = 0.15

    def __init__(self, h: float = 0.3, max_draft: int = DEFAULT_MAX_DRAFT) -> None:
        if not 0 < h < 1:
            raise InvalidRequestError(f"svip threshold h must be in (0, 1), got {h}")
        self.h = h
        self.max_draft = max_draft
        self.name = f"svip:{h:g}"
        self._max_entropy = h * h / self.GAMMA  # sqrt(γH) > h  <=>  H > h²/γ

    def round_limit(self) -> int:
        return self.max_draft

    def judge(self, step: StepStats) -> Verdict:
        return Verdict.STOP if step.entropy > self._max_entropy else Verdict.CONTINUE


class PMin(DraftPolicy):
    """llama.cpp's rule: stop, without keeping it, at a token whose top-1 probability < p."""

    wants_top_prob = True

    def __init__(self, p: float = 0.75, max_draft: int = DEFAULT_MAX_DRAFT) -> None:
        if not 0 <= p < 1:
            raise InvalidRequestError(f"pmin threshold must be in [0, 1), got {p}")
        self.p = p
        self.max_draft = max_draft
        self.name = f"pmin:{p:g}"

    def round_limit(self) -> int:
        return self.max_draft

    def judge(self, step: StepStats) -> Verdict:
        return Verdict.DROP if step.top_prob < self.p else Verdict.CONTINUE


class AdaEdl(DraftPolicy):
    """AdaEDL: stop (keeping the token) when the acceptance lower bound 1 - sqrt(γH) < λ.

    γ = 0.2 is the paper's default. The paper's λ update is not public; we adapt λ with
    Draft&Verify's rule (arXiv 2309.08168), which targets an acceptance rate α: after each
    round AR <- (AR + accepted/drafted)/2; λ' = λ + ε if AR < α, λ - ε if the round ran to
    its length limit with AR >= α, else λ; then λ <- 0.9 λ + 0.1 λ'. Start λ = 0.6 (stop at
    H > 0.8 nats), ε = 0.01, α = 0.9 as in Draft&Verify.
    """

    wants_entropy = True
    GAMMA = 0.2

    def __init__(self, lam: float = 0.6, target_rate: float = 0.9, step: float = 0.01,
                 max_draft: int = DEFAULT_MAX_DRAFT) -> None:
        self.lam = lam
        self.target_rate = target_rate
        self.step = step
        self.max_draft = max_draft
        self.rate = target_rate
        self.name = "adaedl"

    def round_limit(self) -> int:
        return self.max_draft

    def judge(self, step: StepStats) -> Verdict:
        bound = 1.0 - math.sqrt(self.GAMMA * step.entropy)
        return Verdict.STOP if bound < self.lam else Verdict.CONTINUE

    def observe(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        self.rate = 0.5 * self.rate + 0.5 * accepted / drafted
        if self.rate < self.target_rate:
            proposal = self.lam + self.step
        elif drafted >= self.max_draft:
            proposal = self.lam - self.step
        else:
            proposal = self.lam
        self.lam = min(0.99, max(0.0, 0.9 * self.lam + 0.1 * proposal))

    def describe(self) -> str:
        return f"adaedl(λ={self.lam:.2f})"


class WithLookup(DraftPolicy):
    """`inner` with prompt lookup first: a round whose context ends in an n-gram seen before
    verifies the tokens that followed it, and the draft model rests; other rounds are the
    inner policy's, and only those teach it (a copy's outcome says nothing about the draft)."""

    def __init__(self, inner: DraftPolicy, lookup: PromptLookup) -> None:
        self.inner = inner
        self.lookup = lookup
        self.wants_entropy = inner.wants_entropy
        self.wants_top_prob = inner.wants_top_prob
        self.name = self._join(inner.name)
        self._copied = False

    def _join(self, inner: str) -> str:
        if isinstance(self.inner, NoDraft):
            return self.lookup.spec
        return f"{inner}+{self.lookup.spec}"

    def start(self, sampling: SamplingParams) -> None:
        self.inner.start(sampling)

    def propose(self, context: Sequence[int] | np.ndarray, cap: int) -> list[int]:
        tokens = self.lookup.propose(context, cap)
        self._copied = bool(tokens)
        return tokens

    def round_limit(self) -> int:
        return self.inner.round_limit()

    def judge(self, step: StepStats) -> Verdict:
        return self.inner.judge(step)

    def observe(self, drafted: int, accepted: int) -> None:
        if not self._copied:
            self.inner.observe(drafted, accepted)
        self._copied = False

    def describe(self) -> str:
        return self._join(self.inner.describe())


def with_lookup(policy: DraftPolicy, lookup: PromptLookup | None) -> DraftPolicy:
    """`policy` with `lookup` (replacing any it had); unchanged when lookup is None."""
    if lookup is None:
        return policy
    return WithLookup(policy.inner if isinstance(policy, WithLookup) else policy, lookup)


class PerTemperature(DraftPolicy):
    """A policy per sampling temperature, chosen as each generation starts: the one calibrated
    at the temperature nearest the generation's. How often the target accepts a draft token
    falls as the temperature rises (a sampled token must survive rejection sampling, not just
    equal an argmax), so the draft length that pays greedily can lose when sampling."""

    def __init__(self, by_temperature: Sequence[tuple[float, DraftPolicy]]) -> None:
        if not by_temperature:
            raise ValueError("PerTemperature needs at least one policy")
        self.by_temperature = sorted(by_temperature, key=lambda tp: tp[0])
        self.current = self.by_temperature[0][1]
        self.name = " | ".join(f"T{t:g}: {p.name}" for t, p in self.by_temperature)

    @property
    def wants_entropy(self) -> bool:  # type: ignore[override]
        return self.current.wants_entropy

    @property
    def wants_top_prob(self) -> bool:  # type: ignore[override]
        return self.current.wants_top_prob

    def start(self, sampling: SamplingParams) -> None:
        self.current = min(self.by_temperature,
                           key=lambda tp: abs(tp[0] - sampling.temperature))[1]
        self.current.start(sampling)

    def propose(self, context: Sequence[int] | np.ndarray, cap: int) -> list[int]:
        return self.current.propose(context, cap)

    def round_limit(self) -> int:
        return self.current.round_limit()

    def judge(self, step: StepStats) -> Verdict:
        return self.current.judge(step)

    def observe(self, drafted: int, accepted: int) -> None:
        self.current.observe(drafted, accepted)

    def describe(self) -> str:
        return self.current.describe()


def entropy_and_top_prob(logits: npt.NDArray[np.float32], scratch: npt.NDArray[np.float32]
                         ) -> tuple[float, float]:
    """Entropy (nats) and top-1 probability of softmax(logits) in one exp pass.

    With y = x - max x and Z = Σ e^y: H = log Z - Σ e^y·y / Z and p_top = 1/Z. `scratch` is a
    reusable buffer of the same size (no allocation per draft step).
    """
    y = np.subtract(logits, logits.max(), out=scratch)
    e = np.exp(y)
    z = float(e.sum(dtype=np.float64))
    h = math.log(z) - float(np.dot(e, y)) / z
    return max(h, 0.0), 1.0 / z


def parse_policy(spec: str, *, max_draft: int = DEFAULT_MAX_DRAFT) -> DraftPolicy:
    """Build a policy from `NAME[:ARG]`: none, constant:K, heuristic, svip[:h], pmin[:p],
    adaedl, each optionally `+lookup[:N[:M]]` (or a lookup alone). (`auto` and `svip-cost`
    need this machine's calibration: svip_local.autopolicy.)"""
    base, lookup = split_lookup(spec)
    return with_lookup(_parse_base(base, max_draft), lookup)


def _parse_base(spec: str, max_draft: int) -> DraftPolicy:
    name, _, arg = spec.strip().partition(":")
    name = name.lower()
    try:
        if name == "none":
            return NoDraft()
        if name == "constant":
            return Constant(int(arg) if arg else 5)
        if name == "heuristic":
            return Heuristic(int(arg) if arg else 5, max_draft=max_draft)
        if name == "svip":
            return Svip(float(arg) if arg else 0.3, max_draft=max_draft)
        if name == "pmin":
            return PMin(float(arg) if arg else 0.75, max_draft=max_draft)
        if name == "adaedl":
            return AdaEdl(float(arg) if arg else 0.6, max_draft=max_draft)
    except ValueError as exc:
        raise InvalidRequestError(f"bad argument in policy {spec!r}: {exc}") from exc
    raise InvalidRequestError(
        f"unknown policy {spec!r}; known: auto, none, constant:K, heuristic, svip[:h], "
        "pmin[:p], adaedl, svip-cost[:R], each optionally +lookup[:N[:M]]")
