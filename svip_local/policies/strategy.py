"""What a generation runs: a draft-length policy composed with an optional proposal source,
and, for calibrated specs, one such pair per sampling temperature; `parse_policy` builds it
from a spec.

Each round the strategy decides its plan (`decide` -> `RoundPlan`): a fixed strategy copies
whenever its proposer has something (copies cost one target verification and no draft step),
else drafts up to its policy's limit. Only rounds the draft model drafted teach the length
policy (a copy's outcome says nothing about the draft).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from svip_local.calibration.record import nearest
from svip_local.policies.base import DraftPolicy, Expander, Proposer
from svip_local.policies.round_plan import ALONE, RoundPlan
from svip_local.policies.rules import NoDraft
from svip_local.policies.table import PolicyContext, check_spec, split_spec
from svip_local.sampling import SamplingParams
from svip_local.transcript import Transcript

if TYPE_CHECKING:
    from svip_local.round_result import RoundResult


class Strategy:
    """A length policy, optionally an expander that widens its chain into a tree, and
    optionally a proposal source tried first each round."""

    __slots__ = ("policy", "proposer", "expander")

    def __init__(self, policy: DraftPolicy, proposer: Proposer | None = None,
                 expander: Expander | None = None) -> None:
        self.policy = policy
        self.proposer = proposer
        self.expander = expander

    def _join(self, policy_text: str) -> str:
        if self.expander is not None:
            policy_text = f"{policy_text}+{self.expander.name}"
        if self.proposer is None:
            return policy_text
        if isinstance(self.policy, NoDraft):  # copies between target-alone steps
            return self.proposer.name
        return f"{policy_text}+{self.proposer.name}"

    @property
    def name(self) -> str:
        """The spec that builds this strategy again."""
        return self._join(self.policy.name)

    def describe(self) -> str:
        return self._join(self.policy.describe())

    @property
    def needs_draft(self) -> bool:
        return self.policy.round_limit() > 0

    @property
    def speculates(self) -> bool:
        return self.needs_draft or self.proposer is not None

    def for_sampling(self, sampling: SamplingParams) -> Strategy:
        return self

    def under_constraint(self) -> Strategy:
        """The strategy for a constrained generation (a live one learns acceptance there
        apart from free text's); fixed policies are the same."""
        return self

    def with_proposer(self, proposer: Proposer) -> Strategy:
        """The same policy object (its learnt state included) with `proposer` instead."""
        return Strategy(self.policy, proposer, self.expander)

    def with_expander(self, expander: Expander) -> Strategy:
        return Strategy(self.policy, self.proposer, expander)

    def decide(self, transcript: Transcript | None, room: int, remaining: int) -> RoundPlan:
        """This round's plan: the proposer's copy if it has one, else a draft up to the
        policy's limit (none without a draft model: the round runs the target alone).
        `transcript`: everything so far (None in a replay without the prompt); `room`: the
        most tokens the round may add; `remaining`: what the generation may still produce,
        this round's included."""
        if room <= 0:
            return ALONE
        if self.proposer is not None and transcript is not None:
            copy = self.proposer.propose(transcript, room)
            if copy is not None and len(copy.tokens):
                return RoundPlan("lookup", copy)
        cap = min(self.policy.round_limit(), room)
        return RoundPlan("draft", draft=cap) if cap > 0 else ALONE

    def learn(self, plan: RoundPlan, result: RoundResult) -> None:
        """Called with each round's plan, outcome and timings (a live strategy learns)."""

    def report(self) -> dict[str, Any] | None:
        """What it chose and estimated, for the generation's statistics (None: nothing)."""
        return None


class PerTemperature:
    """A strategy per sampling temperature, chosen as each generation starts: the one
    calibrated at the temperature nearest the generation's. How often the target accepts a
    draft token falls as the temperature rises (a sampled token must survive rejection
    sampling, not just equal an argmax), so the draft length that pays greedily can lose when
    sampling."""

    def __init__(self, by_temperature: Sequence[tuple[float, Strategy]]) -> None:
        if not by_temperature:
            raise ValueError("PerTemperature needs at least one strategy")
        self.by_temperature = sorted(by_temperature, key=lambda ts: ts[0])

    @property
    def name(self) -> str:
        return " | ".join(f"T{t:g}: {s.name}" for t, s in self.by_temperature)

    @property
    def needs_draft(self) -> bool:
        return any(s.needs_draft for _, s in self.by_temperature)

    @property
    def speculates(self) -> bool:
        return any(s.speculates for _, s in self.by_temperature)

    def for_sampling(self, sampling: SamplingParams) -> Strategy:
        return nearest(self.by_temperature, sampling.temperature, lambda ts: ts[0])[1]

    def with_proposer(self, proposer: Proposer) -> PerTemperature:
        return PerTemperature([(t, s.with_proposer(proposer)) for t, s in self.by_temperature])

    def with_expander(self, expander: Expander) -> PerTemperature:
        return PerTemperature([(t, s.with_expander(expander)) for t, s in self.by_temperature])


Plan = Strategy | PerTemperature


def as_plan(policy: DraftPolicy | Strategy | PerTemperature) -> Plan:
    """A bare length policy runs without a proposal source."""
    return Strategy(policy) if isinstance(policy, DraftPolicy) else policy


def parse_policy(spec: str, context: PolicyContext | None = None) -> Plan:
    """The plan a spec names, built for an engine described by `context`."""
    ctx = context or PolicyContext()
    check_spec(spec, ctx)
    parsed = split_spec(spec)
    known, args = parsed.policy
    plan = as_plan(known.build(args, ctx))
    if parsed.expander is not None:
        widen, widen_args = parsed.expander
        plan = plan.with_expander(widen.build(widen_args, ctx))
    if parsed.proposer is not None:
        source, source_args = parsed.proposer
        plan = plan.with_proposer(source.build(source_args, ctx))
    return plan
