"""`auto`: each round, whatever is expected to give the most tokens per second on this
machine now — the target alone, a copy from the context (prompt lookup), or a draft of
cost-aware SVIP — priced with estimates learnt from the rounds themselves.

Per round, in tokens gained over the target alone (one round of the target alone takes t1,
so spending s more seconds costs s / t1 tokens):

* copy: the copier (`lookup.Copier`) continues the text it is copying while the reply keeps
  following it, else finds the earlier occurrence with the longest match of the context's
  end. A copy of m tokens gains sum_{i<=m} prod_{j<=i} a_j - (verify(m+1) - t1) / t1, with
  a_j the copy model's chance that copied token j is accepted after j - 1 were, from the
  evidence the match carries (its length, the chain it continues, agreeing and disagreeing
  occurrences, where the text lies: `calibration.copies`); m is the best length up to
  `max_copy`, none if no length gains.
* draft: the model's prediction, shrunk towards the realised gain of recent drafting rounds
  (catch-up after a target-alone stretch counted as a steady round's) the more of them there
  are, and back towards the prediction as the reply moves on without drafting (what they
  measured says less about text STALE_TOKENS further on). The prediction: the best constant
  length k under the live acceptance chain (the first token accepted at the mean rate, each
  further one at the rate given that the one before was). Within the round cost-aware SVIP
  decides the length with the live costs and entropy map (`svip-cost`'s rule; with the
  learnt acceptance head's chances where the calibrated choice reads them); where the
  calibrated choice at this temperature widens its chain into a token tree (CaPE), so do
  these rounds (`calibrated_expander`), and their realised gain includes what the tree won.
* the target alone gains 0.

Switching to drafting after a target-alone stretch first costs the draft's catch-up decode of
what it has not seen (the whole prompt, at the start): that price is spread over the rounds
the reply has left, so a short remainder does not buy a long catch-up. A copy needs no
catch-up.

The better positive gain runs; with none positive, a short copy (where there is a match) or
a short draft explores, each kind while the time lost to it stays within its share of the
reply's time (the time so far, and until HORIZON tokens the rest of those at the target
alone's pace): a copy costs only its verification rows, a draft its steps and the catch-up,
and neither budget can starve the other. So `auto` learns that copying or drafting started
to pay (the text changed, the machine got busier). The live estimates start from the stored
calibration, else from the previous session's estimates, else from the engine's start-up
probe (`svip_local.probe`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from svip_local.calibration import AcceptanceHead, Calibration
from svip_local.calibration.copies import FEATURES
from svip_local.calibration.costs import MAX_TREE_VERIFY
from svip_local.calibration.live import (
    BatchPrices,
    LiveCosts,
    LiveModel,
    default_costs,
    outcome,
)
from svip_local.errors import InvalidRequestError
from svip_local.policies.auto import choice_spec
from svip_local.policies.base import DraftPolicy, Expander, StepStats, Verdict
from svip_local.policies.cape import CostAwareCape
from svip_local.policies.cost import CostAwareSvip
from svip_local.policies.lookup import Copier
from svip_local.policies.round_plan import ALONE, Copy, RoundPlan
from svip_local.policies.strategy import Strategy
from svip_local.policies.table import PolicyContext, register, split_spec
from svip_local.sampling import SamplingParams
from svip_local.transcript import Transcript

if TYPE_CHECKING:
    from svip_local.round_result import RoundResult

EXPLORE_SHARE = {"lookup": 0.01, "draft": 0.02}  # the most of a reply's time spent on
# rounds of each kind that the estimates said lose
EXPLORE_TOKENS = {"lookup": 4, "draft": 2}  # the most tokens an exploring round copies/drafts
TRUST_ROUNDS = 8.0  # drafting rounds after which their realised gain counts as much as the
# prediction: one round's gain is noisy (a hard sentence, one dropped draft), and a verdict on
# the first three would decide a whole reply
STALE_TOKENS = 256.0  # tokens without drafting after which that gain counts half as much
HORIZON = 128  # tokens a reply is assumed to run at least (the exploration budget's base)
ARMS = ("none", "lookup", "draft")


@register("auto", rule="each round the fastest of the target alone, prompt lookup and "
                       "cost-aware SVIP, by this machine's costs and this text's acceptance "
                       "learnt live (from the stored calibration or a start-up probe)",
          label="{resolved}", grid=())
def auto(args: tuple[Any, ...], context: PolicyContext) -> LiveAuto:
    if context.temperature is not None:
        raise InvalidRequestError("a calibrated choice cannot be `auto` itself: run "
                                  "`svip-local calibrate` again")
    model = context.live() if context.live is not None else prior_model(context.calibration())
    return LiveAuto(model, max_draft=context.max_draft, max_copy=context.max_copy,
                    has_draft=context.has_draft)


def prior_model(cal: Calibration | None) -> LiveModel:
    """Live estimates from a calibration alone (the simulator; an engine adds its probe)."""
    if cal is None:
        return LiveModel.start(default_costs(), "defaults")
    return LiveModel.start(LiveCosts.from_model(cal.costs), "calibration", cal)


def calibrated_expander(cal: Calibration | None, temperature: float) -> Expander | None:
    """The expander of the calibrated choice nearest `temperature`: the drafting rounds
    widen into trees exactly where calibration found this machine's batches pay for them
    (CaPE on a big target, none where each row costs nearly a decode)."""
    if cal is None:
        return None
    parsed = split_spec(choice_spec(cal.choice_at(temperature)))
    # The calibration goes along: a tree sized by this machine's costs (cape-cost) reads them.
    return None if parsed.expander is None else parsed.expander[0].build(
        parsed.expander[1], PolicyContext(calibration=lambda: cal))


def calibrated_head(cal: Calibration | None, temperature: float) -> AcceptanceHead | None:
    """The learnt acceptance head where the calibrated choice nearest `temperature` stops
    its drafts by one (`specdec`, `specdec-cost`): there the head predicted acceptance
    better than the entropy map by enough to pay, and the drafting rounds' cost-aware rule
    reads its chances instead of the live entropy map's."""
    if cal is None:
        return None
    choice = cal.choice_at(temperature)
    reads_head = split_spec(choice_spec(choice)).policy[0].name in ("specdec", "specdec-cost")
    return choice.head if reads_head else None


class LiveCape(CostAwareCape):
    """Cost-aware CaPE priced each drafting round by the live costs and rate."""

    @property
    def name(self) -> str:
        return "cape-cost (live)"


def live_expander(model: LiveModel, temperature: float, has_draft: bool) -> Expander | None:
    """Without a calibration, greedy drafting rounds widen into trees priced by the live
    costs (the probe's verification curve, then the rounds'): wide on a GPU, where a row is
    nearly free, and none where a row costs almost a decode, with no calibration run first.
    Not when sampling: there a leaf is accepted only from the residual that rejecting the
    drafted token leaves, about half as often as its draft probability says (measured on
    this pair's sampled traces), so only a calibration that found trees paying at that
    temperature widens those rounds."""
    if model.calibration is not None or temperature > 0 or not has_draft:
        return None
    costs = model.costs_for(temperature)
    # Priced again before every drafting round; until then at the target alone's rate.
    return LiveCape(costs.table(MAX_TREE_VERIFY), 1.0 / max(costs.verify_at(1), 1e-9))


class LiveDraft(CostAwareSvip):
    """Cost-aware SVIP repriced every drafting round; records the entropies it judged (the
    acceptance map learns from them) and the chain's outcome."""

    def __init__(self, max_draft: int, head: AcceptanceHead | None = None) -> None:
        DraftPolicy.__init__(self, max_draft=max_draft)
        self.read_head(head)
        self._p = 1.0
        self.entropies: list[float] = []
        self.outcome = (0, 0)  # the last drafted round's chain: (drafted, accepted)

    @property
    def name(self) -> str:
        return "svip-cost (live)" if self.head is None else "specdec-cost (live)"

    def judge(self, step: StepStats) -> Verdict:
        if step.n_drafted == 1:
            self.entropies.clear()
        self.entropies.append(step.entropy)
        return super().judge(step)

    def observe(self, drafted: int, accepted: int) -> None:
        self.outcome = (drafted, accepted)


class LiveAuto(Strategy):
    """The plan `auto` builds: one live strategy per generation (`for_sampling`), all sharing
    the engine's `LiveModel`. Each round `decide` returns its `RoundPlan`, and `learn` takes
    what the round paid and got."""

    __slots__ = ("model", "has_draft", "max_copy", "copier", "costs", "prices", "accept", "counts",
                 "emitted", "explore_loss_s", "elapsed_s", "tokens", "draft_synced", "_lag",
                 "_seq_len", "_remaining", "_started", "_undrafted", "temperature",
                 "constrained")

    def __init__(self, model: LiveModel, *, max_draft: int, max_copy: int, has_draft: bool,
                 temperature: float = 0.0, constrained: bool = False) -> None:
        super().__init__(LiveDraft(max_draft, calibrated_head(model.calibration, temperature)),
                         None,
                         calibrated_expander(model.calibration, temperature)
                         or live_expander(model, temperature, has_draft))
        self.model, self.has_draft, self.max_copy = model, has_draft, max_copy
        self.copier = Copier()
        self.costs = model.costs_for(temperature)
        self.prices = BatchPrices(self.costs)  # what this request's rows cost, shared
        self.temperature, self.constrained = temperature, constrained
        self.accept = model.acceptance_for(temperature, constrained)
        self.counts = dict.fromkeys(ARMS, 0)  # rounds of each kind
        self.emitted = dict.fromkeys(ARMS, 0)  # tokens they emitted
        self.explore_loss_s = dict.fromkeys(EXPLORE_SHARE, 0.0)  # by kind: lookup, draft
        self.elapsed_s = 0.0
        self.tokens = 0
        self.draft_synced = 0  # tokens the draft's cache holds, as far as this generation knows
        self._lag = 0  # tokens the draft would catch up on if this round drafted
        self._seq_len = 0  # tokens before this round
        self._remaining = 1  # tokens the generation may still produce, this round's included
        self._started = False
        self._undrafted = 0  # tokens since this generation's last drafting round

    @property
    def name(self) -> str:
        return "auto"

    def describe(self) -> str:
        """`auto · probe` before a round (where its estimates came from), then the arms whose
        proposals were kept, with their share of the reply (`auto → lookup 41%`: a code edit
        copies in a few rounds while most rounds are the target alone's), or `auto → none`;
        `· learning` while drafting's gain is still mostly predicted rather than measured."""
        if not self._started:
            return f"auto · {self.model.source}"
        learning = " · learning" if self._learning() else ""
        return f"auto → {self.kept_shares()}{learning}"

    def kept_shares(self) -> str:
        """`lookup 41% + draft 12%`: the share of the tokens made in rounds of each arm whose
        proposals were accepted, the largest first; `none` where nothing proposed was kept."""
        total = sum(self.emitted.values()) or 1
        kept = sorted((a for a in ARMS if a != "none" and self.emitted[a] > self.counts[a]),
                      key=lambda a: -self.emitted[a])
        return " + ".join(f"{a} {100 * self.emitted[a] / total:.0f}%" for a in kept) or "none"

    def _learning(self) -> bool:
        return self.has_draft and self.accept.gain_weight < TRUST_ROUNDS

    def leading_arm(self) -> str:
        """What made most of this generation's tokens (exploring rounds by what they ran):
        a code edit's few copy rounds emit more than its many target-alone ones."""
        return max(self.emitted, key=lambda a: self.emitted[a])

    @property
    def needs_draft(self) -> bool:
        return False  # it drafts only where a draft model is there and pays

    @property
    def speculates(self) -> bool:
        return True

    def for_sampling(self, sampling: SamplingParams) -> LiveAuto:
        """A fresh strategy for one generation at this temperature (its own exploration
        budget, counts and copy chain), learning into the shared model."""
        return type(self)(self.model, max_draft=self.policy.max_draft, max_copy=self.max_copy,
                          has_draft=self.has_draft, temperature=sampling.temperature)

    def under_constraint(self) -> LiveAuto:
        """This generation's strategy learning acceptance under a grammar apart."""
        return type(self)(self.model, max_draft=self.policy.max_draft, max_copy=self.max_copy,
                          has_draft=self.has_draft, temperature=self.temperature,
                          constrained=True)

    def with_proposer(self, proposer: Any) -> LiveAuto:
        raise InvalidRequestError("auto chooses prompt lookup itself: use `auto` alone")

    def with_expander(self, expander: Any) -> LiveAuto:
        raise InvalidRequestError("auto chooses how each round proposes: use `auto` alone")

    # -- each round ----------------------------------------------------------------------

    def decide(self, transcript: Transcript | None, room: int, remaining: int) -> RoundPlan:
        self._started = True
        self._remaining = max(1, remaining)
        copy = None
        if transcript is not None:
            # The tokens the last round added: the copier's chain goes on if they follow it.
            self.copier.advance(transcript, transcript.seq_len - self._seq_len)
            self._seq_len = transcript.seq_len
            self._lag = max(0, self._seq_len - self.draft_synced)
            copy = self.copier.find(transcript, min(room, self.max_copy))
        if room <= 0:
            return ALONE
        t1 = self.prices.verify_at(1)
        copy_len, copy_gain = self._best_copy(copy, t1) if copy is not None else (0, 0.0)
        draft_gain = self._draft_gain(t1, room) if self.has_draft else -math.inf
        if copy is not None and copy_len and copy_gain >= max(0.0, draft_gain):
            return RoundPlan("lookup", _cut(copy, copy_len),
                             why=f"copy {copy_len}: +{copy_gain:.2f} tokens")
        if draft_gain > 0:
            return self._drafting(room, t1, f"draft: +{draft_gain:.2f} tokens")
        if copy is not None:
            n = min(len(copy.tokens), EXPLORE_TOKENS["lookup"])
            if self._may_explore("lookup", self.prices.verify_at(n + 1) - t1, t1):
                return RoundPlan("lookup", _cut(copy, n), explore=True,
                                 why=f"explore: copy {n} (+{copy_gain:.2f} predicted)")
        n = min(room, EXPLORE_TOKENS["draft"])
        if self.has_draft and self._may_explore("draft", self._explore_draft_cost(n, t1), t1):
            return self._drafting(n, t1, f"explore: draft (+{draft_gain:.2f} predicted)",
                                  explore=True)
        return ALONE

    def _drafting(self, cap: int, t1: float, why: str, *, explore: bool = False
                  ) -> RoundPlan:
        """A drafting round up to `cap` tokens, the cost-aware rule priced with what was
        learnt so far, at the rate `_rate`."""
        policy = self.policy
        assert isinstance(policy, LiveDraft)
        rate = self._rate(t1)
        tree = self.expander if isinstance(self.expander, LiveCape) else None
        # One table prices the chain's rule and a live tree's leaves alike.
        table = self.prices.table(policy.max_draft + 2 if tree is None
                                 else max(policy.max_draft + 2, MAX_TREE_VERIFY))
        policy.set_prices(table, self.prices.step, self.accept.acceptance_map(), rate)
        if tree is not None:
            tree.price(table, rate)
        return RoundPlan("draft", draft=min(cap, policy.max_draft), explore=explore, why=why)

    def _rate(self, t1: float) -> float:
        """R, the rate extra time must beat: the best in reach (Dinkelbach), at least the
        target alone's and at least what this generation achieves."""
        return max(1.0 / t1 if t1 > 0 else 0.0,
                   self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0, 1e-9)

    def _best_copy(self, copy: Copy, t1: float) -> tuple[int, float]:
        """The copy length (0: none) and its expected gain over the target alone, in tokens
        (expected accepted tokens less the extra verification's seconds at the target
        alone's pace, as drafting's gain is counted). The length is the one that gains most
        at the rate R (`_rate`): above the target alone's rate, a long copy that would still
        beat the target alone gives way to a shorter one and another round."""
        n = len(copy.tokens)
        if n == 0 or t1 <= 0 or copy.evidence is None:
            return 0, 0.0
        expected = np.cumsum(np.cumprod(self.accept.copies.chances(copy.evidence, n)))
        extra = self.prices.array(n + 1)[2:] - t1  # verify(m + 1) - verify(1)
        m = int(np.argmax(expected - self._rate(t1) * extra))
        gain = float(expected[m] - extra[m] / t1)
        return (m + 1 if gain > 0 else 0), gain

    def _draft_gain(self, t1: float, room: int) -> float:
        """Expected tokens a drafting round gains over the target alone: the prediction of
        the best constant length k under the live acceptance chain, shrunk towards the
        realised gain of recent drafting rounds as they accumulate (n / (n + TRUST_ROUNDS),
        less as the reply moves on without drafting); less this round's share of the
        catch-up a switch to drafting costs, spread over the rounds the reply has left."""
        accept, costs = self.accept, self.prices
        first, then = accept.mean_accept(), accept.mean_accept_next()
        predicted, expected, p, best_expected = -math.inf, 0.0, 1.0, 0.0
        for k in range(1, min(room, self.policy.max_draft) + 1):
            p *= first if k == 1 else then
            expected += p
            gain_k = expected - (k * costs.step + costs.verify_at(k + 1) - t1) / t1
            if gain_k > predicted:
                predicted, best_expected = gain_k, expected
        n = accept.gain_weight
        w = n / (n + TRUST_ROUNDS) * 0.5 ** (self._undrafted / STALE_TOKENS)
        gain = float((1 - w) * predicted + w * accept.gain)
        if t1 > 0:
            gain -= self._catchup_share(1.0 + best_expected) / t1
        return gain

    def _catchup_share(self, per_round: float) -> float:
        """This round's share of the draft's catch-up of what it has not seen, in seconds:
        the catch-up serves every drafting round after it, so it is spread over the rounds
        the reply has left at `per_round` tokens a round."""
        if self._lag <= 2:
            return 0.0
        rounds_left = max(1.0, self._remaining / per_round)
        return self._lag * self.prices.catchup / rounds_left

    def _explore_draft_cost(self, n: int, t1: float) -> float:
        """Seconds an exploring draft of n tokens costs beyond a target-alone round: its
        steps and verification rows, and the draft's catch-up of what it has not seen (all
        of it: where drafting loses, exploring pays it each time)."""
        costs = self.prices
        return n * costs.step + costs.verify_at(n + 1) - t1 + self._lag * costs.catchup

    def _may_explore(self, kind: str, cost: float, t1: float) -> bool:
        """Whether one more exploring round of `kind` (costing `cost` seconds more than the
        target alone) keeps that kind's exploration within its share of the reply's time:
        so far, plus, until HORIZON tokens, the rest of those at the target alone's pace (so
        the first rounds, where exploring is cheapest, may explore; a reply that stops
        before HORIZON may lose more than the share)."""
        ahead = max(0, min(self._remaining, HORIZON - self.tokens))
        budget = EXPLORE_SHARE[kind] * (self.elapsed_s + ahead * t1)
        return self.explore_loss_s[kind] + max(cost, 0.0) <= budget

    def learn(self, plan: RoundPlan, result: RoundResult) -> None:
        costs, accept = self.costs, self.accept
        spent = result.draft_s + result.verify_s
        first = not any(self.counts.values())
        self.counts[plan.arm] += 1
        self.emitted[plan.arm] += result.accepted + 1
        self.elapsed_s += spent
        self.tokens += result.accepted + 1
        if not first:
            # The reply's first verification also pays for leaving the prompt's batch shape
            # (over RPC 3-30x a steady one; a graph capture on GPUs): not a price to learn.
            # A tree's every row, and those of the requests that shared its batch.
            costs.observe_verify(max(result.batch_rows, result.nodes + 1), result.verify_s)
        # The next round's rows join about as many of the others' as this one's did (their
        # verifications: a prefill that shared this batch is gone by then).
        self.prices.others, self.prices.waiting = result.shared_rows, result.shared_with
        t1 = costs.verify_at(1)
        if plan.copy is not None and plan.copy.evidence is not None:
            tested = min(len(result.proposed), result.accepted + 1)
            accept.copies.observe(plan.copy.evidence, [
                outcome(i, result.accepted, result.chances) for i in range(tested)])
        elif result.draft_steps:
            policy = self.policy
            assert isinstance(policy, LiveDraft)
            # The chain's own outcome: an accepted leaf of a tree is not its chain token's.
            accept.observe_draft(policy.entropies, *policy.outcome, result.chances)
            # A long catch-up (after target-alone rounds) is the price of switching, not of
            # drafting: a steady drafting round catches up one or two tokens.
            steady = result.draft_s
            if result.catchup > 2:
                steady += costs.step - result.catchup_s
                costs.observe_catchup(result.catchup, result.catchup_s)
            costs.observe_step(steady / result.draft_steps)
            if t1 > 0:
                accept.observe_gain(result.accepted - (steady + result.verify_s - t1) / t1)
        if plan.explore and t1 > 0:
            self.explore_loss_s[plan.arm] += max(0.0, spent - (result.accepted + 1) * t1)
        if result.draft_steps:
            self.draft_synced = self._seq_len + result.accepted
            self._undrafted = 0
        else:
            self._undrafted += result.accepted + 1

    def report(self) -> dict[str, Any]:
        rounds = max(1, sum(self.counts.values()))
        t1 = self.costs.verify_at(1)
        elapsed = self.elapsed_s or 1.0
        return {
            "choice": self.leading_arm(),
            "rounds": dict(self.counts),
            "tokens": dict(self.emitted),
            "explore_share": {k: v / elapsed for k, v in self.explore_loss_s.items()},
            "source": self.model.source,
            "learning": self._learning(),
            "verify_1_s": t1,
            "verify_8_s": self.costs.verify_at(8),
            "draft_step_s": self.costs.step,
            "acceptance": self.accept.mean_accept(),
            "draft_gain": self.accept.gain,
            "copy_model": dict(zip(FEATURES, self.accept.copies.weights, strict=True)),
            "share": {a: c / rounds for a, c in self.counts.items()},
        }


def _cut(copy: Copy, n: int) -> Copy:
    """The first n tokens of a chain copy."""
    return Copy(copy.tokens[:n], evidence=copy.evidence, source=copy.source)
