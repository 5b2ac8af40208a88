"""`auto`: each round, whatever is expected to give the most tokens per second on this
machine now — the target alone, a copy from the context (prompt lookup), or a draft of
cost-aware SVIP — priced with estimates learnt from the rounds themselves.

Per round, in tokens gained over the target alone (one round of the target alone takes t1,
so spending s more seconds costs s / t1 tokens):

* copy: where the context's last n-gram occurred before, a copy of m tokens gains
  sum_{i<=m} prod_{j<=i} a_j - (verify(m+1) - t1) / t1, with a_j the live chance that copied
  token j is accepted after j - 1 were; m is the best length, none if no length gains.
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
the reply has left, so a short remainder does not buy a long catch-up.

The better positive gain runs; with none positive, a short draft (or copy) explores while the
time lost to exploring stays within EXPLORE_SHARE of the reply's time (the time so far, and
until HORIZON tokens the rest of those at the target alone's pace), so `auto` learns that
drafting started to pay (the text changed, the machine got busier). Early rounds explore most
cheaply: the draft has least to catch up on and the reply most rounds left to use what was
learnt. The live estimates start from the stored calibration, else from the previous
session's estimates, else from the engine's start-up probe (`svip_local.probe`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from svip_local.calibration import AcceptanceHead, Calibration
from svip_local.calibration.costs import MAX_TREE_VERIFY
from svip_local.calibration.live import LiveCosts, LiveModel, default_costs
from svip_local.errors import InvalidRequestError
from svip_local.policies.base import DraftPolicy, Expander, StepStats, Verdict
from svip_local.policies.cape import CostAwareCape
from svip_local.policies.cost import CostAwareSvip
from svip_local.policies.lookup import PromptLookup
from svip_local.policies.strategy import Strategy
from svip_local.policies.table import PolicyContext, register, split_spec
from svip_local.sampling import SamplingParams
from svip_local.tree import TokenTree

EXPLORE_SHARE = 0.02  # the most of a reply's time spent on rounds the model said lose
EXPLORE_DRAFT = 2  # the most tokens an exploring round drafts (or copies)
TRUST_ROUNDS = 8.0  # drafting rounds after which their realised gain counts as much as the
# prediction: one round's gain is noisy (a hard sentence, one dropped draft), and a verdict on
# the first three would decide a whole reply
STALE_TOKENS = 256.0  # tokens without drafting after which that gain counts half as much
HORIZON = 128  # tokens a reply is assumed to run at least (the exploration budget's base)
LOOKUP_NGRAM = 5  # what calibration chose on every CPU measured so far
ARMS = ("none", "lookup", "draft", "explore")


@register("auto", rule="each round the fastest of the target alone, prompt lookup and "
                       "cost-aware SVIP, by this machine's costs and this text's acceptance "
                       "learnt live (from the stored calibration or a start-up probe)",
          label="{resolved}", grid=())
def auto(args: tuple[Any, ...], context: PolicyContext) -> LiveAuto:
    if context.temperature is not None:
        raise InvalidRequestError("a calibrated choice cannot be `auto` itself: run "
                                  "`svip-local calibrate` again")
    model = context.live() if context.live is not None else prior_model(context.calibration())
    return LiveAuto(model, max_draft=context.max_draft, has_draft=context.has_draft,
                    ngram=lookup_ngram(model.calibration))


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
    choices = [cal.greedy, *cal.sampled]
    spec = min(choices, key=lambda c: abs(c.temperature - temperature)).choice
    parsed = split_spec(spec)
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
    choice = min(cal.choices, key=lambda c: abs(c.temperature - temperature))
    reads_head = split_spec(choice.choice).policy[0].name in ("specdec", "specdec-cost")
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


def lookup_ngram(cal: Calibration | None) -> int:
    """The n-gram of the calibrated choice's prompt lookup, where it has one."""
    if cal is not None:
        parsed = split_spec(cal.choice)
        if parsed.proposer is not None:
            return int(parsed.proposer[1][0] or LOOKUP_NGRAM)
    return LOOKUP_NGRAM


class LiveDraft(CostAwareSvip):
    """Cost-aware SVIP repriced every round; records the entropies it judged (the acceptance
    map learns from them). An exploring round keeps its first token whatever the rule says
    and judges the rest as a drafting round would: so it measures the gain drafting rounds
    actually get (a token the rule would drop is never verified, so a map too pessimistic
    somewhere would otherwise never learn better), not that of a fixed length that drafts
    where the rule would not."""

    def __init__(self, max_draft: int, head: AcceptanceHead | None = None) -> None:
        DraftPolicy.__init__(self, max_draft=max_draft)
        self.read_head(head)
        self._p = 1.0
        self.cap = 0
        self.force = False
        self.entropies: list[float] = []
        self.outcome = (0, 0)  # the last drafted round's chain: (drafted, accepted)

    @property
    def name(self) -> str:
        return "svip-cost (live)" if self.head is None else "specdec-cost (live)"

    def round_limit(self) -> int:
        return self.cap

    def judge(self, step: StepStats) -> Verdict:
        if step.n_drafted == 1:
            self.entropies.clear()
        self.entropies.append(step.entropy)
        verdict = super().judge(step)
        if self.force and step.n_drafted == 1 and verdict is Verdict.DROP:
            self._p = self.chances(step)[0]
            return Verdict.STOP
        return verdict

    def observe(self, drafted: int, accepted: int) -> None:
        self.outcome = (drafted, accepted)


class LiveAuto(Strategy):
    """The plan `auto` builds: one live strategy per generation (`for_sampling`), all sharing
    the engine's `LiveModel`."""

    __slots__ = ("model", "has_draft", "lookup", "costs", "accept", "arm",
                 "copy", "counts", "explore_loss_s", "elapsed_s", "tokens", "draft_synced",
                 "_lag", "_seq_len", "_remaining", "_started", "_undrafted")

    def __init__(self, model: LiveModel, *, max_draft: int, has_draft: bool, ngram: int,
                 temperature: float = 0.0) -> None:
        super().__init__(LiveDraft(max_draft, calibrated_head(model.calibration, temperature)),
                         None,
                         calibrated_expander(model.calibration, temperature)
                         or live_expander(model, temperature, has_draft))
        self.model, self.has_draft = model, has_draft
        self.lookup = PromptLookup(ngram, max_draft)
        self.proposer = _Copy(self)
        self.costs = model.costs_for(temperature)
        self.accept = model.acceptance_for(temperature)
        self.arm = "none"
        self.copy: list[int] = []
        self.counts = dict.fromkeys(ARMS, 0)
        self.explore_loss_s = self.elapsed_s = 0.0
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
        """`auto · probe` before a round (where its estimates came from), then what most
        rounds ran: `auto → lookup`, `· learning` while drafting's gain is still mostly
        predicted rather than measured."""
        if not self._started:
            return f"auto · {self.model.source}"
        learning = " · learning" if self._learning() else ""
        return f"auto → {self.leading_arm()}{learning}"

    def _learning(self) -> bool:
        return self.has_draft and self.accept.gain_weight < TRUST_ROUNDS

    def leading_arm(self) -> str:
        """What most rounds of this generation ran (exploration counted as drafting)."""
        counts = dict(self.counts)
        counts["draft"] += counts.pop("explore")
        return max(counts, key=lambda a: counts[a])

    @property
    def needs_draft(self) -> bool:
        return False  # it drafts only where a draft model is there and pays

    @property
    def speculates(self) -> bool:
        return True

    def for_sampling(self, sampling: SamplingParams) -> LiveAuto:
        """A fresh strategy for one generation at this temperature (its own exploration
        budget and counts), learning into the shared model."""
        policy = self.policy
        assert isinstance(policy, LiveDraft)
        return type(self)(self.model, max_draft=policy.max_draft, has_draft=self.has_draft,
                          ngram=self.lookup.ngram, temperature=sampling.temperature)

    def with_proposer(self, proposer: Any) -> LiveAuto:
        raise InvalidRequestError("auto chooses prompt lookup itself: use `auto` alone")

    def with_expander(self, expander: Any) -> LiveAuto:
        raise InvalidRequestError("auto chooses how each round proposes: use `auto` alone")

    # -- each round ----------------------------------------------------------------------

    def begin_round(self, context: Sequence[int] | npt.NDArray[np.int32] | None,
                    room: int, remaining: int) -> None:
        self._started = True
        self._remaining = max(1, remaining)
        policy = self.policy
        assert isinstance(policy, LiveDraft)
        policy.cap, policy.force, self.copy, self.arm = 0, False, [], "none"
        if room <= 0:
            return
        costs, accept = self.costs, self.accept
        t1 = costs.verify_at(1)
        if context is not None:
            self._seq_len = len(context)
            self._lag = max(0, self._seq_len - self.draft_synced)
        found = self.lookup.propose(context, room) if context is not None else []
        copy_len, copy_gain = self._best_copy(len(found), t1)
        draft_gain = self._draft_gain(t1, room) if self.has_draft else -np.inf
        if copy_len and copy_gain >= max(0.0, draft_gain):
            self.arm, self.copy = "lookup", found[:copy_len]
        elif draft_gain > 0:
            self.arm, policy.cap = "draft", room
        elif self._may_explore(t1, len(found)):
            self.arm = "explore"
            if self.has_draft and (not found or accept.gain_weight <= sum(accept.copy_tries)):
                policy.cap, policy.force = min(EXPLORE_DRAFT, room), True
            else:
                self.copy = found[:EXPLORE_DRAFT]
        if policy.cap:
            # R of the cost-aware rule: the best rate in reach (Dinkelbach), which is at
            # least the target alone's and at least what this generation achieves.
            rate = max(1.0 / t1 if t1 > 0 else 0.0,
                       self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0)
            rate = max(rate, 1e-9)
            tree = self.expander if isinstance(self.expander, LiveCape) else None
            # One table prices the chain's rule and a live tree's leaves alike.
            table = costs.table(policy.max_draft + 2 if tree is None
                                else max(policy.max_draft + 2, MAX_TREE_VERIFY))
            policy.set_prices(table, costs.step, accept.acceptance_map(), rate)
            if tree is not None:
                tree.price(table, rate)

    def _best_copy(self, found: int, t1: float) -> tuple[int, float]:
        """The copy length (0: none) with the largest expected gain, and that gain."""
        best_len, best_gain, p, expected = 0, 0.0, 1.0, 0.0
        for m in range(1, found + 1):
            p *= self.accept.copy_accept(m)
            expected += p
            gain = expected - (self.costs.verify_at(m + 1) - t1) / t1
            if gain > best_gain:
                best_len, best_gain = m, gain
        return best_len, best_gain

    def _draft_gain(self, t1: float, room: int) -> float:
        """Expected tokens a drafting round gains over the target alone: the prediction of
        the best constant length k under the live acceptance chain, shrunk towards the
        realised gain of recent drafting rounds as they accumulate (n / (n + TRUST_ROUNDS),
        less as the reply moves on without drafting); less this round's share of the
        catch-up a switch to drafting costs, spread over the rounds the reply has left."""
        accept, costs = self.accept, self.costs
        first, then = accept.mean_accept(), accept.mean_accept_next()
        predicted, expected, p, best_expected = -np.inf, 0.0, 1.0, 0.0
        for k in range(1, min(room, self.policy.max_draft) + 1):
            p *= first if k == 1 else then
            expected += p
            gain_k = expected - (k * costs.step + costs.verify_at(k + 1) - t1) / t1
            if gain_k > predicted:
                predicted, best_expected = gain_k, expected
        n = accept.gain_weight
        w = n / (n + TRUST_ROUNDS) * 0.5 ** (self._undrafted / STALE_TOKENS)
        gain = float((1 - w) * predicted + w * accept.gain)
        if self._lag > 2 and t1 > 0:
            rounds_left = max(1.0, self._remaining / (1.0 + best_expected))
            gain -= self._lag * costs.catchup / t1 / rounds_left
        return gain

    def _may_explore(self, t1: float, found: int) -> bool:
        """Whether one more exploring round keeps exploration within its share of the
        reply's time (its cost: a short draft or copy and its verification, plus the
        catch-up). The reply's time: so far, plus, until HORIZON tokens, the rest of those
        at the target alone's pace (so the first rounds, where exploring is cheapest, may
        explore; a reply that stops before HORIZON may lose more than the share)."""
        if not self.has_draft and not found:
            return False
        costs = self.costs
        cost = EXPLORE_DRAFT * costs.step + costs.verify_at(EXPLORE_DRAFT + 1) - t1
        if self.has_draft:
            cost += self._lag * costs.catchup
        ahead = max(0, min(self._remaining, HORIZON - self.tokens))
        budget = EXPLORE_SHARE * (self.elapsed_s + ahead * t1)
        return self.explore_loss_s + max(cost, 0.0) <= budget

    def learn(self, result: Any) -> None:
        costs, accept = self.costs, self.accept
        n = len(result.proposed)
        spent = result.draft_s + result.verify_s
        first = not any(self.counts.values())
        self.counts[self.arm] += 1
        self.elapsed_s += spent
        self.tokens += result.accepted + 1
        if not first:
            # The reply's first verification also pays for leaving the prompt's batch shape
            # (over RPC 3-30x a steady one; a graph capture on GPUs): not a price to learn.
            costs.observe_verify(result.nodes + 1, result.verify_s)  # a tree's every row
        t1 = costs.verify_at(1)
        if result.copied:
            accept.observe_copy(n, result.accepted, result.chances)
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
        if self.arm == "explore" and t1 > 0:
            self.explore_loss_s += max(0.0, spent - (result.accepted + 1) * t1)
        if result.draft_steps:
            self.draft_synced = self._seq_len + result.accepted
            self._undrafted = 0
        else:
            self._undrafted += result.accepted + 1

    def report(self) -> dict[str, Any]:
        rounds = max(1, sum(self.counts.values()))
        t1 = self.costs.verify_at(1)
        return {
            "choice": self.leading_arm(),
            "rounds": dict(self.counts),
            "explore_share": self.explore_loss_s / self.elapsed_s if self.elapsed_s else 0.0,
            "source": self.model.source,
            "learning": self._learning(),
            "verify_1_s": t1,
            "verify_8_s": self.costs.verify_at(8),
            "draft_step_s": self.costs.step,
            "acceptance": self.accept.mean_accept(),
            "draft_gain": self.accept.gain,
            "copy_accept_1": self.accept.copy_accept(1),
            "share": {a: c / rounds for a, c in self.counts.items()},
        }


class _Copy:
    """The proposer side of `LiveAuto`: the copy its round decided on, if any."""

    def __init__(self, owner: LiveAuto) -> None:
        self.owner = owner

    @property
    def name(self) -> str:
        return "lookup (live)"

    def propose_into(self, tree: TokenTree, context: Sequence[int] | npt.NDArray[np.int32],
                     cap: int) -> None:
        tree.extend_chain(self.owner.copy[:cap])


