"""Calibration's choice: replay every candidate policy on recorded traces under a measured
cost model and keep the fastest, then check the way of choosing on held-out prompts.

Speculation must beat the target alone by `MARGIN` in the simulation to be chosen, and another
policy must beat the paper's SVIP by `TIE`: a tie is not worth the risk of being wrong by the
simulator's error.

A choice made on a dozen prompts flatters itself: the best of fifty candidates on those prompts
is partly the luckiest. So the choice is validated on prompts it was not searched on (each of
`FOLDS` folds of the prompts replayed under the policy chosen on the others), and the
difference between how those choices did where they were chosen and where they were not (the
selection's optimism) is the error inside which the simplest candidate is preferred: the
target alone over a copy, a copy over a draft, a fixed rule over a fitted one.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from svip_local.bench import copy_fit, predictors
from svip_local.bench.simulate import (
    decode_rate,
    mean_rate,
    realise_all,
    simulate_set,
    total_rate,
)
from svip_local.bench.traces import PromptTrace
from svip_local.calibration import (
    AcceptanceHead,
    AcceptanceMap,
    CostModel,
    TemperatureChoice,
)
from svip_local.policies import (
    CostAwareCape,
    CostAwareSpecDec,
    CostAwareSvip,
    Plan,
    PolicyContext,
    SpecDec,
    Strategy,
    build_part,
    parse_policy,
    table as policy_table,
)
from svip_local.policies.table import split_spec

log = logging.getLogger(__name__)

MARGIN = 0.03
# The paper's SVIP stays the choice unless another policy beats it by more than the
# simulator's policy-to-policy error (measured: about 1-2%); a simulated 1% is not a real one.
DEFAULT = "svip:0.3"
TIE = 0.02
# The policy table's grids: every registered policy's candidates, expanders (token trees
# from the draft's chain) and proposal sources.
CANDIDATES: tuple[str, ...] = tuple(policy_table.candidates())
EXPANDERS: tuple[str, ...] = tuple(policy_table.part_candidates("expander"))
PROPOSERS: tuple[str, ...] = tuple(policy_table.part_candidates("proposer"))
_LOOKUP_BASES = 3  # the best speculative policies that are also tried with lookup, or widened
_RATE_STEPS = (0.7, 0.85, 1.0, 1.15, 1.3)  # multiples of the best other rate tried for R
_DINKELBACH_ITERATIONS = 6
# SpecDec++'s thresholds on P(a rejection in the round), tried where a head was learnt (its
# scripts use 0.3 to 0.7).
SPECDEC_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FOLDS = 3  # held-out validation: each third of the prompts replayed under the others' choice


@dataclass(frozen=True)
class Candidate:
    """One policy's simulated outcome on the calibration traces."""

    policy: str
    tokens_per_s: float  # total tokens / total time
    mean_tokens_per_s: float  # mean of per-prompt rates
    decode_tokens_per_s: float  # tokens / time after prefill: svip-cost's R (see `search`)
    mean_draft: float
    acceptance: float

    @property
    def score(self) -> float:
        """What the choice maximises: the mean of per-prompt rates, i.e. how much faster each
        reply is, as the SVIP paper reports speed. The total rate would let the few prompts
        with long prefills (summaries, RAG) decide for every short chat turn."""
        return self.mean_tokens_per_s


@dataclass(frozen=True)
class Choice:
    policy: str
    cost_rate: float
    candidates: tuple[Candidate, ...]  # best first
    makers: dict[str, Callable[[], Plan]] = field(default_factory=dict, compare=False,
                                                  repr=False)  # each candidate's plan
    head_threshold: float | None = None  # the best specdec:h (None: no head)
    head_rate: float | None = None  # the best specdec-cost:R

    def score(self, policy: str) -> float:
        return next(c.score for c in self.candidates if c.policy == policy)


@dataclass(frozen=True)
class HeldOut:
    """How a choice generalises: speedups over the target alone (mean of per-prompt rates)
    of each fold's choice, on the prompts it was chosen on and on those it was not."""

    in_sample: float
    held_out: float
    choices: tuple[str, ...]  # each fold's choice

    @property
    def optimism(self) -> float:
        """How much better the choices looked where they were chosen than elsewhere."""
        return max(0.0, self.in_sample / self.held_out - 1.0) if self.held_out > 0 else 0.0


def evaluate(traces: Sequence[PromptTrace], name: str, make: Callable[[], Plan],
             costs: CostModel, *, max_draft: int) -> Candidate:
    results = simulate_set(traces, make, costs, max_draft=max_draft)
    drafted = sum(r.drafted for r in results)
    rounds = sum(r.rounds for r in results)
    return Candidate(name, total_rate(results), mean_rate(results), decode_rate(results),
                     drafted / rounds if rounds else 0.0,
                     sum(r.accepted for r in results) / drafted if drafted else 0.0)


def search(traces: Sequence[PromptTrace], costs: CostModel, acceptance: AcceptanceMap, *,
           max_draft: int, head: AcceptanceHead | None = None,
           candidates: Sequence[str] = CANDIDATES,
           expanders: Sequence[str] = EXPANDERS, proposers: Sequence[str] = PROPOSERS,
           margin: float = MARGIN, tie: float = TIE) -> Choice:
    """Simulate every candidate (and svip-cost at the rates Dinkelbach's iteration visits;
    with a learnt `head`, specdec over SPECDEC_GRID and specdec-cost at its own rates), then
    the best few widened into trees by each expander (cape-cost priced at svip-cost's rate),
    then the best few of all and the target alone with each proposal source, and choose the
    best by `Candidate.score` (the mean of per-prompt rates). Trees are priced by the
    verification cost of all their nodes, so they win only where this machine's batches
    leave room for them.

    svip-cost's R is a decode rate, not a total one: a generation's length is fixed, so one
    more token saves the time the loop would spend making it; prefill is paid either way.
    """
    context = PolicyContext(max_draft=max_draft)
    makers: dict[str, Callable[[], Plan]] = {
        spec: functools.partial(parse_policy, spec, context)
        for spec in (*candidates, "none", DEFAULT)}
    table = {spec: evaluate(traces, spec, make, costs, max_draft=max_draft)
             for spec, make in makers.items()}
    start = max(c.decode_tokens_per_s for c in table.values())

    def best_rate(make: Callable[[float], Plan], name: str) -> float:
        """R of a cost-aware rule: the best of a few multiples of the best other rate and
        the rates Dinkelbach's iteration visits; its candidate joins the table."""
        def at(rate: float) -> Candidate:
            return evaluate(traces, f"{name}:{rate:.4g}", lambda: make(rate), costs,
                            max_draft=max_draft)

        tried = [at(start * m) for m in _RATE_STEPS]
        rate = start
        for _ in range(_DINKELBACH_ITERATIONS):
            got = at(rate)
            tried.append(got)
            if math.isclose(got.decode_tokens_per_s, rate, rel_tol=1e-3) \
                    or got.decode_tokens_per_s <= 0:
                break
            rate = got.decode_tokens_per_s
        best = max(tried, key=lambda c: c.score)
        chosen = float(best.policy.partition(":")[2])
        table[best.policy] = best
        makers[best.policy] = lambda: make(chosen)
        return chosen

    cost_rate = best_rate(lambda r: Strategy(CostAwareSvip(costs, acceptance, r,
                                                           max_draft=max_draft)), "svip-cost")
    head_threshold = head_rate = None
    if head is not None:
        learnt = head

        def stopping_at(h: float) -> Plan:
            return Strategy(SpecDec(learnt, h, max_draft=max_draft))

        by_threshold = {h: evaluate(traces, f"specdec:{h:g}",
                                    functools.partial(stopping_at, h), costs,
                                    max_draft=max_draft) for h in SPECDEC_GRID}
        head_threshold = max(by_threshold, key=lambda h: by_threshold[h].score)
        best_h = by_threshold[head_threshold]
        table[best_h.policy] = best_h
        makers[best_h.policy] = functools.partial(stopping_at, head_threshold)
        head_rate = best_rate(lambda r: Strategy(CostAwareSpecDec(
            costs, acceptance, r, learnt, max_draft=max_draft)), "specdec-cost")

    def drafting() -> list[str]:
        return [c.policy for c in sorted(table.values(), key=lambda c: -c.score)
                if c.policy != "none"][:_LOOKUP_BASES]

    def add(make: Callable[[], Plan]) -> None:
        combo = make().name
        makers[combo] = make
        table[combo] = evaluate(traces, combo, make, costs, max_draft=max_draft)

    def widened(base: str, spec: str) -> Callable[[], Plan]:
        return lambda: makers[base]().with_expander(build_part(spec, "expander"))

    def copying(base: str, spec: str) -> Callable[[], Plan]:
        return lambda: makers[base]().with_proposer(build_part(spec, "proposer"))

    def priced(base: str) -> Callable[[], Plan]:  # the tree sized by this machine's costs
        return lambda: makers[base]().with_expander(CostAwareCape.from_costs(costs, cost_rate))

    for base in drafting():
        for spec in expanders:
            add(widened(base, spec))
        add(priced(base))
    copyable = any(t.context() is not None for t in traces)  # traces with their prompts
    for base in ("none", *drafting()) if copyable else ():
        for spec in proposers:
            add(copying(base, spec))
    ranked = tuple(sorted(table.values(), key=lambda c: -c.score))
    best = ranked[0]
    if best.score < table[DEFAULT].score * (1 + tie):
        best = table[DEFAULT]
    if best.policy != "none" and best.score < table["none"].score * (1 + margin):
        best = table["none"]
    return Choice(best.policy, cost_rate, ranked, makers, head_threshold, head_rate)


def fit_and_search(traces: Sequence[PromptTrace], costs: CostModel, *, max_draft: int
                   ) -> tuple[Choice, AcceptanceMap, AcceptanceHead | None]:
    """Fit the acceptance map and (where the traces hold hidden states) the acceptance head,
    and search, on traces of one temperature (sampled ones replayed through realisations,
    the same for every candidate; the head learns from their chances)."""
    replay = realise_all(traces)
    acceptance = AcceptanceMap.fit([(t.entropy[:t.generated], t.match[:t.generated])
                                    for t in replay])
    head = predictors.fit_head(traces, traces[0].temperature if traces else 0.0)
    return (search(replay, costs, acceptance, max_draft=max_draft, head=head), acceptance,
            head)


def held_out(traces: Sequence[PromptTrace], costs: CostModel, *, max_draft: int,
             folds: int = FOLDS) -> HeldOut | None:
    """Each fold of the prompts (every `folds`-th, so each fold mixes categories) replayed
    under the policy chosen on the other folds; None with fewer than two prompts."""
    ids = list(dict.fromkeys(t.prompt_id for t in traces))
    k = min(folds, len(ids))
    if k < 2:
        return None
    inside, outside, picks = [], [], []
    for f in range(k):
        test_ids = set(ids[f::k])
        choice, _, _ = fit_and_search([t for t in traces if t.prompt_id not in test_ids],
                                      costs, max_draft=max_draft)
        test = realise_all([t for t in traces if t.prompt_id in test_ids])
        picked, alone = (evaluate(test, p, choice.makers[p], costs, max_draft=max_draft)
                         for p in (choice.policy, "none"))
        inside.append(choice.score(choice.policy) / choice.score("none"))
        outside.append(picked.score / alone.score if alone.score > 0 else 0.0)
        picks.append(choice.policy)
    return HeldOut(float(sum(inside) / k), float(sum(outside) / k), tuple(picks))


def complexity(spec: str) -> int:
    """How much a policy fits to the calibration prompts: the target alone 0, a copy from
    the context 1, a fixed draft rule 2, one fitted to this pair's acceptance map 3; an
    expander or a proposal source on top of a draft rule adds 1 each."""
    parsed = split_spec(spec)
    known = parsed.policy[0]
    rank = 0 if known.name == "none" else 3 if known.needs_calibration else 2
    return rank + (parsed.expander is not None) + (parsed.proposer is not None)


def simplest_within(choice: Choice, optimism: float) -> str:
    """The simplest candidate whose simulated score is within the selection's optimism of
    the choice's (the choice itself if none is simpler): a difference the held-out prompts
    say the simulation cannot resolve is not worth a more fitted policy."""
    floor = choice.score(choice.policy) / (1.0 + optimism)
    near = [c for c in choice.candidates if c.score >= floor]
    return min(near, key=lambda c: (complexity(c.policy), -c.score)).policy


def choose(traces: Sequence[PromptTrace], costs: CostModel, *, max_draft: int,
           temperature: float = 0.0, copy_traces: Sequence[PromptTrace] = ()
           ) -> TemperatureChoice:
    """Search on the traces of one temperature, validate the way of choosing on held-out
    prompts, and prefer the simplest candidate within what that validation says the choice
    is overrated by; fit the copy model on those traces and `copy_traces` (conversations
    that copy, beside the prompts the search runs on)."""
    choice, acceptance, head = fit_and_search(traces, costs, max_draft=max_draft)
    check = held_out(traces, costs, max_draft=max_draft)
    policy = choice.policy
    if check is not None:
        policy = simplest_within(choice, check.optimism)
        if policy != choice.policy:
            log.info("calibration: %s within %.1f%% of %s (held-out optimism): choosing it",
                     policy, 100 * check.optimism, choice.policy)
    return TemperatureChoice(temperature, policy, acceptance, choice.cost_rate,
                             [asdict(c) for c in choice.candidates],
                             asdict(check) if check is not None else {}, head,
                             choice.head_threshold, choice.head_rate,
                             predictors.compare(traces),
                             copy_fit.fit_copy_model([*traces, *copy_traces], temperature),
                             copy_fit.compare([*traces, *copy_traces]))
