"""The draft-length rules: after each draft step, keep drafting, stop, or stop and drop it.

Rules, defaults and sources: ../shared/reference/policies.md (SVIP: Geralt-Targaryen/SVIP
`eval_specbench.py`; heuristic: transformers' assisted generation as the SVIP code runs it;
pmin: llama.cpp common/speculative.cpp; AdaEDL: arXiv 2410.18351). Each is registered once in
the policy table (`policies.table`), which is all a new rule needs besides its class.
"""

from __future__ import annotations

import math

from svip_local.config import DEFAULT_MAX_DRAFT
from svip_local.errors import InvalidRequestError
from svip_local.policies.base import DraftPolicy, StepStats, Verdict
from svip_local.policies.table import Param, register


@register("none", rule="the target alone", label="target alone")
class NoDraft(DraftPolicy):
    """Target alone: the baseline, and what `auto` picks where speculation cannot pay."""

    def round_limit(self) -> int:
        return 0

    def judge(self, step: StepStats) -> Verdict:
        return Verdict.STOP


@register("constant", Param("k", int, 5, "draft tokens per round", low=1, limit="max_draft"),
          rule="always k draft tokens", label="constant k={k}",
          grid=[(k,) for k in (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)])
class Constant(DraftPolicy):
    """Always k tokens (the SVIP paper's baseline used k = 5)."""

    def __init__(self, k: int = 5, *, max_draft: int = DEFAULT_MAX_DRAFT) -> None:
        if k < 1:
            raise InvalidRequestError(f"constant draft length must be >= 1, got {k}")
        super().__init__(k, max_draft=max_draft)
        self.k = k

    def round_limit(self) -> int:
        return self.k

    def judge(self, step: StepStats) -> Verdict:
        return Verdict.CONTINUE


@register("heuristic", Param("start", int, 5, "first round's length", low=1, limit="max_draft"),
          rule="Hugging Face's schedule: start at `start`, +2 after a fully accepted round, "
               "-1 otherwise", label="HF heuristic")
class Heuristic(DraftPolicy):
    """Hugging Face's schedule as SVIP's code runs it: start at 5, +2 after a round whose every
    scheduled token was accepted, -1 otherwise, floor 1, cap 40 (and our max draft)."""

    def __init__(self, start: int = 5, *, max_draft: int = DEFAULT_MAX_DRAFT) -> None:
        if start < 1:
            raise InvalidRequestError(f"heuristic start must be >= 1, got {start}")
        super().__init__(start, max_draft=max_draft)
        self.schedule = start

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


@register("svip", Param("h", float, 0.3, "threshold on sqrt(0.15 H)", low=0),
          rule="keep the token, then stop when sqrt(0.15·H) > h (H: draft entropy in nats)",
          label="SVIP h={h}", grid=[(h,) for h in (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5,
                                                  0.6)])
class Svip(DraftPolicy):
    """SVIP: keep the token, then stop if sqrt(0.15 * H) > h (H in nats; h = 0.3: H > 0.6)."""

    wants_entropy = True
    GAMMA = 0.15

    def __init__(self, h: float = 0.3, *, max_draft: int = DEFAULT_MAX_DRAFT) -> None:
        if not 0 < h < 1:
            raise InvalidRequestError(f"svip threshold h must be in (0, 1), got {h}")
        super().__init__(h, max_draft=max_draft)
        self.h = h
        self._max_entropy = h * h / self.GAMMA  # sqrt(γH) > h  <=>  H > h²/γ

    def judge(self, step: StepStats) -> Verdict:
        return Verdict.STOP if step.entropy > self._max_entropy else Verdict.CONTINUE


@register("pmin", Param("p", float, 0.75, "least top-1 probability", low=0, high=1),
          rule="llama.cpp's rule: stop, dropping it, at a token whose top-1 probability < p",
          label="p_min {p}", grid=[(p,) for p in (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9)])
class PMin(DraftPolicy):
    """llama.cpp's rule: stop, without keeping it, at a token whose top-1 probability < p."""

    wants_top_prob = True

    def __init__(self, p: float = 0.75, *, max_draft: int = DEFAULT_MAX_DRAFT) -> None:
        if not 0 <= p < 1:
            raise InvalidRequestError(f"pmin threshold must be in [0, 1), got {p}")
        super().__init__(p, max_draft=max_draft)
        self.p = p

    def judge(self, step: StepStats) -> Verdict:
        return Verdict.DROP if step.top_prob < self.p else Verdict.CONTINUE


@register("adaedl", Param("lam", float, 0.6, "starting λ", low=0, high=1),
          rule="stop when 1 - sqrt(0.2·H) < λ, with λ adapted online from acceptance",
          label="AdaEDL")
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

    TARGET_RATE = 0.9
    STEP = 0.01

    def __init__(self, lam: float = 0.6, *, max_draft: int = DEFAULT_MAX_DRAFT) -> None:
        if not 0 <= lam < 1:
            raise InvalidRequestError(f"adaedl λ must be in [0, 1), got {lam}")
        super().__init__(lam, max_draft=max_draft)
        self.lam = lam
        self.rate = self.TARGET_RATE

    def judge(self, step: StepStats) -> Verdict:
        bound = 1.0 - math.sqrt(self.GAMMA * step.entropy)
        return Verdict.STOP if bound < self.lam else Verdict.CONTINUE

    def observe(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        self.rate = 0.5 * self.rate + 0.5 * accepted / drafted
        if self.rate < self.TARGET_RATE:
            proposal = self.lam + self.STEP
        elif drafted >= self.max_draft:
            proposal = self.lam - self.STEP
        else:
            proposal = self.lam
        self.lam = min(0.99, max(0.0, 0.9 * self.lam + 0.1 * proposal))

    def describe(self) -> str:
        return f"adaedl(λ={self.lam:.2f})"
