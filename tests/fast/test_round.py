"""The one round (`svip_local.round.speculative_round`) on the engine's contexts and on a
recorded trace (`bench.simulate.replay_round`), side by side, round for round, on tiny
generated models: the proof that the trace backend stands in for the contexts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from svip_local import Engine, Round, SamplingParams
from svip_local.bench.simulate import ReplayState, replay_round
from svip_local.bench.traces import PromptTrace, record_trace
from svip_local.native import Outputs
from svip_local.policies import Heuristic, PMin, PromptLookup, Strategy, parse_policy
from svip_local.policies.round_plan import RoundPlan
from svip_local.round import Speculator
from svip_local.transcript import Transcript
from tests.support.sim import make_costs

PROMPT = "The quick brown fox"
COSTS = make_costs(lambda b: 0.1 + 0.01 * b)
GREEDY = SamplingParams()


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Engine:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1, policy="none") as eng:
        yield eng


def greedy_trace(engine: Engine, ids: list[int], max_tokens: int) -> PromptTrace:
    engine.reset()
    done = engine.complete(ids, max_tokens=max_tokens, policy="none", ignore_eos=True)
    return record_trace(engine, ids, done, prompt_id=PROMPT, category="qa",
                        max_tokens=max_tokens)


@pytest.mark.parametrize("spec", ["constant:3", "svip:0.3", "pmin:0.5", "heuristic",
                                  "adaedl", "lookup:1:8", "svip:0.3+lookup:2:4",
                                  "constant:4+cape:16", "pmin:0.5+cape:8", "lookup-tree:1:16",
                                  "svip:0.3+cape:8+lookup-tree:2:8"])
def test_engine_round_and_replay_round_agree_round_for_round(engine: Engine,
                                                             spec: str) -> None:
    """Each round accepts the same tokens and emits the same target token, copies the same
    tokens, and proposes the same drafts up to the first rejected one (after it the live draft
    runs on along its own tokens, which a true-prefix trace does not hold: there only "it
    proposed more than it got accepted" must agree)."""
    ids, budget = engine.tokenize(PROMPT), 60
    trace = greedy_trace(engine, ids, budget)
    live_plan, replay_plan = parse_policy(spec), parse_policy(spec)
    live, replay = live_plan.for_sampling(GREEDY), replay_plan.for_sampling(GREEDY)
    speculator = Speculator(engine.target_ctx, engine.draft_ctx, engine.draft_model,
                            engine.n_vocab)
    engine.target_ctx.decode(ids[:-1], Outputs.NONE)  # the prefill the generator does
    rng = np.random.default_rng(0)
    seq, state, replayed = list(ids), ReplayState(0, len(ids)), trace.transcript()
    transcript = Transcript(ids, capacity=len(ids) + budget + 1)
    rounds = copied = 0
    while state.j < budget:
        room = budget - state.j - 1
        ran = speculator.round(seq, transcript, room, live, GREEDY, rng, budget - state.j)
        sim = replay_round(trace, replayed, state, room, replay, COSTS, budget - state.j)
        assert (ran.accepted, ran.next_token, ran.copied) == \
            (sim.accepted, sim.next_token, sim.copied), f"round {rounds}"
        shown = ran.accepted + 1 if ran.accepted < len(ran.proposed) else ran.accepted
        assert ran.proposed[:shown] == sim.proposed[:shown]
        if ran.copied:  # a copy depends on the true prefix alone
            assert ran.nodes == sim.nodes
        if ran.accepted == len(ran.proposed) or ran.copied:
            assert len(ran.proposed) == len(sim.proposed)
        else:
            assert len(sim.proposed) > sim.accepted
        # Both drafted, or neither did; only a drafting round pays for draft steps.
        assert (ran.draft_steps > 0) == (sim.draft_steps > 0) == (sim.draft_s > 0)
        assert sim.verify_s > 0
        seq += ran.tokens
        for t in ran.tokens:
            transcript.append(t)
        state.j += sim.accepted + 1
        state.seq_len += sim.accepted + 1
        rounds, copied = rounds + 1, copied + ran.copied
    assert seq[len(ids):len(ids) + budget] == trace.target.tolist()
    assert rounds < budget  # it speculated
    assert (copied > 0) == ("lookup" in spec)  # the tiny target repeats itself
    engine.reset()


def test_copied_rounds_do_not_teach_the_length_policy(engine: Engine) -> None:
    heuristic = Heuristic()
    events = list(engine.generate(PROMPT, max_tokens=60, ignore_eos=True,
                                  policy=Strategy(heuristic, PromptLookup(1, 4))))
    rounds = [e for e in events if isinstance(e, Round)]
    assert any(r.copied for r in rounds) and any(not r.copied for r in rounds)
    learnt = Heuristic()
    for r in rounds:
        if not r.copied:
            learnt.observe(r.drafted, r.accepted)
    assert heuristic.schedule == learnt.schedule
    everything = Heuristic()
    for r in rounds:
        everything.observe(r.drafted, r.accepted)
    assert everything.schedule != learnt.schedule  # the test could tell the difference


def test_a_sampled_round_reports_the_acceptance_chance_of_each_tested_token(
        engine: Engine) -> None:
    """Up to and including the first rejected token, each drafted token carries the
    rejection test's min(1, p/q): a token certain to pass (chance 1) is never the rejected
    one, a rejected one had a chance below 1. Greedy rounds carry none."""
    ids = engine.tokenize(PROMPT)
    speculator = Speculator(engine.target_ctx, engine.draft_ctx, engine.draft_model,
                            engine.n_vocab)
    for sampling in (SamplingParams(temperature=1.0, seed=0), GREEDY):
        engine.reset()
        engine.target_ctx.decode(ids[:-1], Outputs.NONE)
        strategy = parse_policy("constant:3").for_sampling(sampling)
        rng, seq, tested = np.random.default_rng(0), list(ids), 0
        transcript = Transcript(ids, capacity=len(ids) + 100)
        for _ in range(20):
            ran = speculator.round(seq, transcript, 3, strategy, sampling, rng, 100)
            if sampling.greedy:
                assert ran.chances == ()
            else:
                assert len(ran.chances) == min(ran.accepted + 1, len(ran.proposed))
                assert all(0.0 <= c <= 1.0 for c in ran.chances)
                if ran.accepted < len(ran.proposed):
                    assert ran.chances[ran.accepted] < 1.0
                tested += len(ran.chances)
            seq += ran.tokens
            for t in ran.tokens:
                transcript.append(t)
        assert sampling.greedy or tested >= 20
    engine.reset()


class PlannedStrategy(Strategy):
    """A strategy whose every round runs the plan it is given."""

    def __init__(self, plan: RoundPlan) -> None:
        super().__init__(PMin(0.999))  # drops every token it is asked about
        self.plan = plan

    def decide(self, transcript: Transcript | None, room: int, remaining: int) -> RoundPlan:
        return self.plan


@pytest.mark.parametrize("explore", [False, True])
def test_an_exploring_draft_keeps_its_first_token_whatever_the_rule_says(
        engine: Engine, explore: bool) -> None:
    """Only a verified token can tell a length rule it was wrong: an exploring round keeps
    its first draft token even where the rule drops it, then stops as the rule says."""
    ids = engine.tokenize(PROMPT)
    engine.reset()
    engine.target_ctx.decode(ids[:-1], Outputs.NONE)
    speculator = Speculator(engine.target_ctx, engine.draft_ctx, engine.draft_model,
                            engine.n_vocab)
    strategy = PlannedStrategy(RoundPlan("draft", draft=3, explore=explore))
    ran = speculator.round(list(ids), Transcript(ids, capacity=len(ids) + 8), 3, strategy,
                           GREEDY, np.random.default_rng(0), 8)
    assert (len(ran.proposed), ran.draft_steps) == ((1, 1) if explore else (0, 1))
    engine.reset()
