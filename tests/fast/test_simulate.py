"""The replay simulator and the oracle on hand-made traces whose answers are worked out here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from svip_local.bench.simulate import oracle, realise_all, run_length, simulate, total_rate
from svip_local.bench.traces import PromptTrace
from svip_local.policies import Constant, NoDraft, parse_policy
from tests.support.sim import make_costs, make_trace

LINEAR = make_costs(lambda b: 0.1 + 0.01 * b)


def test_run_length() -> None:
    assert run_length(np.array([1, 1, 0, 1, 0, 0, 1], bool)).tolist() == [2, 1, 0, 1, 0, 0, 1]


def test_constant_k_rounds_and_time() -> None:
    # R1: catch up the 4 prompt tokens (0.04), decode draft 1 (0.01), verify 3 (0.13): the
    #     second draft mismatches, 1 accepted, j=2. The draft kept 1 good token: lag 1.
    # R2: catch up 1 (0.01), decode 1 (0.01), verify 3 (0.13): both accepted, j=5.
    # R3: one token left: no room to draft, verify 1 (0.11).
    trace = make_trace([True, False, True, True, False, True])
    res = simulate(trace, Constant(2), LINEAR)
    assert res.draft_lengths == [2, 2, 0]
    assert res.accepted_lengths == [1, 2, 0]
    assert res.generated == 6
    assert res.time_s == pytest.approx(0.04 + 0.01 + 0.13 + 0.01 + 0.01 + 0.13 + 0.11)


def test_all_accepted_round_catches_up_two_tokens() -> None:
    # After R1 accepts both drafts, the draft never decoded its second one: R2's catch-up is
    # 2 tokens (0.02) instead of 1.
    trace = make_trace([True] * 6)
    res = simulate(trace, Constant(2), LINEAR)
    assert res.draft_lengths == [2, 2]
    assert res.time_s == pytest.approx((0.04 + 0.01 + 0.13) + (0.02 + 0.01 + 0.13))


def test_target_alone_is_one_verify_per_token() -> None:
    costs = make_costs(lambda b: 0.1 * b, round_s=0.001, token_s=0.0005,
                       target_prefill_s=(0.2, 0.01, 0.0))
    res = simulate(make_trace([True] * 10, prompt_tokens=5), NoDraft(), costs)
    assert res.draft_lengths == [0] * 10
    assert res.time_s == pytest.approx(0.2 + 0.04 + 10 * (0.1 + 0.0015))
    assert res.prefill_s == pytest.approx(0.24)


def test_svip_stops_after_a_high_entropy_token() -> None:
    # svip:0.3 stops (keeping the token) at entropy > 0.6 nats.
    trace = make_trace([True] * 8, entropy=[0.1, 0.9, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1])
    res = simulate(trace, parse_policy("svip:0.3"), LINEAR)
    assert res.draft_lengths == [2, 3, 0]
    assert res.accepted_lengths == [2, 3, 0]


def test_pmin_drops_the_unsure_token() -> None:
    # pmin:0.5 drops (does not keep) a token whose top-1 probability < 0.5.
    trace = make_trace([True] * 6, top_prob=[0.9, 0.9, 0.2, 0.9, 0.9, 0.9])
    res = simulate(trace, parse_policy("pmin:0.5"), LINEAR)
    assert res.draft_lengths[0] == 2
    assert res.accepted_lengths[0] == 2


def test_eos_ends_the_replay() -> None:
    # 3 tokens then the end token (position 3); the draft predicts all four and stops at
    # its end token, as the engine's draft loop does.
    trace = make_trace([True] * 4, finish="eos", budget=10)
    res = simulate(trace, Constant(8), LINEAR)
    assert res.generated == 3
    assert res.draft_lengths == [4]


def test_oracle_drafts_exactly_the_agreeing_runs_when_speculation_is_cheap() -> None:
    flat = make_costs(lambda b: 0.1, draft=(0.0, 0.0, 0.0, 0.0), draft_prefill=(0.0, 0.0, 0.0))
    trace = make_trace([True, True, True, False, True, True, False, True])
    res = oracle(trace, flat)
    assert res.draft_lengths == [3, 2, 0]
    assert res.accepted_lengths == res.draft_lengths
    assert res.time_s == pytest.approx(0.3)


def test_oracle_is_the_target_alone_when_verification_is_expensive() -> None:
    costly = make_costs(lambda b: 0.1 * b, draft=(0.05, 0.1, 0.15, 0.2))
    trace = make_trace([True] * 8)
    res = oracle(trace, costly)
    assert res.draft_lengths == [0] * 8
    assert res.time_s == pytest.approx(simulate(trace, NoDraft(), costly).time_s)


@pytest.mark.parametrize("seed", range(5))
def test_oracle_is_never_slower_than_any_policy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    trace = make_trace(rng.random(120) < 0.7, entropy=rng.exponential(0.5, 120),
                       top_prob=rng.random(120), prompt_tokens=20)
    costs = make_costs(lambda b: 0.05 + 0.004 * b, round_s=0.001, step_s=0.0005,
                       argmax_s=0.0001, draft_prefill=(0.01, 0.002, 1e-6),
                       target_depth_s=2e-6, draft_depth_s=1e-6, base_depth=10)
    best = oracle(trace, costs).time_s
    for spec in ("none", "constant:1", "constant:3", "constant:8", "svip:0.3", "pmin:0.6",
                 "heuristic", "adaedl"):
        assert best <= simulate(trace, parse_policy(spec), costs).time_s + 1e-12, spec


def test_total_rate_counts_prefill() -> None:
    costs = make_costs(lambda b: 0.1, target_prefill_s=(1.0, 0.0, 0.0))
    res = simulate(make_trace([True] * 10), NoDraft(), costs)
    assert total_rate([res]) == pytest.approx(10 / 2.0)


def sampled(trace: PromptTrace, chances: Sequence[float]) -> PromptTrace:
    return replace(trace, temperature=1.0, accept_prob=np.asarray(chances, np.float32))


def test_realisations_accept_with_the_recorded_chances() -> None:
    trace = sampled(make_trace([True] * 4000), [0.0, 0.3, 0.9, 1.0] * 1000)
    real = trace.realise(np.random.default_rng(0))
    rates = real.match.reshape(1000, 4).mean(axis=0)
    assert rates[0] == 0 and rates[3] == 1
    assert rates[1] == pytest.approx(0.3, abs=0.05) and rates[2] == pytest.approx(0.9, abs=0.03)
    # Still a sampled generation (for the costs and per-temperature policies), without copies.
    assert real.temperature == 1.0 and real.context() is None


def test_realise_all_repeats_the_set_with_the_same_draws_for_every_caller() -> None:
    traces = [sampled(make_trace([True] * 50), [0.5] * 50) for _ in range(3)]
    a, b = realise_all(traces, draws=4), realise_all(traces, draws=4)
    assert len(a) == 12
    assert all((x.match == y.match).all() for x, y in zip(a, b, strict=True))
    assert len({tuple(x.match) for x in a}) > 1  # each draw is a fresh realisation
    greedy = [make_trace([True, False])]
    assert realise_all(greedy, draws=4) == greedy


def test_a_certain_and_an_impossible_acceptance_replay_like_greedy_traces() -> None:
    trace = make_trace([True] * 12)
    always = realise_all([sampled(trace, [1.0] * 12)])[0]
    never = realise_all([sampled(trace, [0.0] * 12)])[0]
    assert simulate(always, Constant(3), LINEAR).accepted_lengths == \
        simulate(trace, Constant(3), LINEAR).accepted_lengths
    assert set(simulate(never, Constant(3), LINEAR).accepted_lengths) == {0}


def test_sampled_replay_reads_each_row_at_the_sampling_cost() -> None:
    costs = make_costs(lambda b: 0.1, argmax_s=0.001, sample_s=0.004)
    greedy = make_trace([False] * 5)  # nothing to accept: the oracle is the target alone too
    at_t1 = replace(greedy, temperature=1.0)  # a realised sampled trace
    extra = simulate(at_t1, NoDraft(), costs).time_s - simulate(greedy, NoDraft(), costs).time_s
    assert extra == pytest.approx(5 * 0.003)
    assert oracle(at_t1, costs).time_s - oracle(greedy, costs).time_s == pytest.approx(extra)
