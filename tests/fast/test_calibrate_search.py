"""Calibration's choice on synthetic traces and cost models, and the cost-aware SVIP policy."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from svip_local.bench.calibrate_search import (
    Candidate,
    Choice,
    choose,
    complexity,
    held_out,
    search,
    simplest_within,
)
from svip_local.bench.calibrate_text import held_out_line
from svip_local.bench.costs import fit_overhead
from svip_local.bench.traces import PromptTrace
from svip_local.calibration import AcceptanceMap, TemperatureChoice, nondecreasing
from svip_local.policies import CostAwareSvip, StepStats, Verdict
from tests.support.sim import make_costs, make_trace


def synthetic_traces(n: int = 4, length: int = 200, seed: int = 0) -> list[PromptTrace]:
    """Acceptance falls with entropy (like SVIP's bound): about 80% of tokens accepted."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ent = rng.exponential(0.4, length)
        match = rng.random(length) < np.clip(1 - np.sqrt(0.15 * ent), 0, 1)
        out.append(make_trace(match, entropy=ent, prompt_tokens=30))
    return out


def fitted(traces: list[PromptTrace]) -> AcceptanceMap:
    return AcceptanceMap.fit([(t.entropy, t.match) for t in traces])


EXPENSIVE = make_costs(lambda b: 0.05 * b, draft=(0.02, 0.04, 0.06, 0.08))
CHEAP = make_costs(lambda b: 0.05 + 0.0005 * b, draft=(0.001, 0.002, 0.003, 0.004),
                   draft_prefill=(0.0, 0.001, 0.0))


def test_expensive_verification_chooses_no_speculation() -> None:
    traces = synthetic_traces()
    choice = search(traces, EXPENSIVE, fitted(traces), max_draft=16)
    assert choice.policy == "none"
    assert choice.candidates[0].policy == "none"


def test_cheap_verification_chooses_a_long_draft() -> None:
    traces = synthetic_traces()
    choice = search(traces, CHEAP, fitted(traces), max_draft=16)
    chosen = next(c for c in choice.candidates if c.policy == choice.policy)
    assert choice.policy != "none"
    assert chosen.mean_draft >= 4
    none = next(c for c in choice.candidates if c.policy == "none")
    assert chosen.tokens_per_s > 1.5 * none.tokens_per_s


def test_a_narrow_win_is_not_worth_the_risk() -> None:
    traces = synthetic_traces()
    costs = make_costs(lambda b: 0.05 + 0.012 * b, draft=(0.012, 0.02, 0.03, 0.04))
    free = search(traces, costs, fitted(traces), max_draft=16, margin=0.0)
    none = next(c for c in free.candidates if c.policy == "none")
    gain = free.candidates[0].score / none.score - 1
    assert free.policy != "none" and gain > 0
    assert search(traces, costs, fitted(traces), max_draft=16,
                  margin=gain + 0.01).policy == "none"


def test_cost_aware_svip_is_searched_and_competitive() -> None:
    traces = synthetic_traces()
    costs = make_costs(lambda b: 0.05 + 0.004 * b, draft=(0.006, 0.01, 0.014, 0.018))
    choice = search(traces, costs, fitted(traces), max_draft=16)
    rates = {c.policy: c.score for c in choice.candidates}
    cost_aware = [p for p in rates if p.startswith("svip-cost:") and "+" not in p]
    assert len(cost_aware) == 1 and float(cost_aware[0].split(":")[1]) == choice.cost_rate
    assert rates[cost_aware[0]] >= 0.97 * rates["svip:0.3"]


def test_cost_aware_rate_is_a_decode_rate_that_prefill_does_not_change() -> None:
    # Prefill is paid whatever the policy; valuing a token at a rate diluted by it would make
    # svip-cost draft too long. So a long prefill must leave svip-cost's R where it was.
    traces = synthetic_traces()
    decode = make_costs(lambda b: 0.05 + 0.004 * b, draft=(0.006, 0.01, 0.014, 0.018))
    slow_prefill = make_costs(lambda b: 0.05 + 0.004 * b, draft=(0.006, 0.01, 0.014, 0.018),
                              target_prefill_s=(30.0, 0.0, 0.0))
    fast = search(traces, decode, fitted(traces), max_draft=16)
    slow = search(traces, slow_prefill, fitted(traces), max_draft=16)
    assert slow.cost_rate == pytest.approx(fast.cost_rate)
    none = next(c for c in slow.candidates if c.policy == "none")
    assert none.decode_tokens_per_s > 3 * none.tokens_per_s  # the prefill really dominates
    assert slow.cost_rate > 2 * max(c.tokens_per_s for c in slow.candidates)


def test_the_paper_default_stays_unless_beaten_by_more_than_the_tie_margin() -> None:
    traces = synthetic_traces()
    costs = make_costs(lambda b: 0.05 + 0.004 * b, draft=(0.006, 0.01, 0.014, 0.018))
    free = search(traces, costs, fitted(traces), max_draft=16, tie=0.0)
    rates = {c.policy: c.score for c in free.candidates}
    assert "svip:0.3" in rates
    assert free.policy != "svip:0.3" and rates[free.policy] > rates["svip:0.3"]
    gain = rates[free.policy] / rates["svip:0.3"] - 1
    assert search(traces, costs, fitted(traces), max_draft=16,
                  tie=gain + 0.01).policy == "svip:0.3"


def test_acceptance_map_is_fitted_non_increasing() -> None:
    traces = synthetic_traces(n=8)
    amap = fitted(traces)
    assert list(amap.knots) == sorted(amap.knots)
    assert all(a >= b for a, b in zip(amap.now, amap.now[1:], strict=False))
    assert all(a >= b for a, b in zip(amap.after, amap.after[1:], strict=False))
    assert amap.accept(0.0) > 0.85 and amap.accept(amap.knots[-1]) < amap.accept(0.0) - 0.2
    assert amap.accept(1e9) == amap.now[-1]  # clamped beyond the knots
    assert AcceptanceMap.from_dict(amap.to_dict()) == amap


def test_nondecreasing_averages_a_spike() -> None:
    assert nondecreasing([1.0, 2.0, 9.0, 3.0, 4.0]) == [1.0, 2.0, 5.333333333333333,
                                                         5.333333333333333, 5.333333333333333]


def test_fit_overhead_separates_rounds_tokens_and_steps() -> None:
    true = np.array([0.002, 0.0005, 0.001])
    rows = [(float(np.dot(true, (r, t, s))), r, t, s)
            for r, t, s in [(100, 100, 0), (50, 100, 120), (80, 100, 80), (30, 100, 200)]]
    assert fit_overhead(rows) == pytest.approx(tuple(true))
    # Target-alone runs alone cannot tell rounds from tokens: all goes to one term.
    r, t, s = fit_overhead([(0.25, 100, 100, 0)])
    assert s == 0 and r * 100 + t * 100 == pytest.approx(0.25)


def step(n: int, entropy: float) -> StepStats:
    return StepStats(n, entropy, float("nan"))


def test_cost_aware_svip_drafts_while_it_pays() -> None:
    # One more token costs a draft step (1 ms) and a verification row (0.5 ms): at 100
    # tokens/s it must bring 0.15 expected tokens.
    sure = AcceptanceMap((0.0, 1.0), (0.99, 0.3), (0.99, 0.3))
    policy = CostAwareSvip(CHEAP, sure, rate=100.0)
    assert [policy.judge(step(n, 0.01)) for n in (1, 2, 3)] == [Verdict.CONTINUE] * 3
    # P(all 4 accepted) = 0.99^3 * 0.3 pays for its row (0.05) but not for a fifth token
    # (0.3 * 0.29 < 0.15): keep it and stop.
    assert policy.judge(step(4, 1.0)) is Verdict.STOP


def test_cost_aware_svip_drops_a_token_its_verification_row_does_not_pay_for() -> None:
    unsure = AcceptanceMap((0.0, 1.0), (0.3, 0.1), (0.3, 0.1))
    assert CostAwareSvip(EXPENSIVE, unsure, rate=20.0).judge(step(1, 0.5)) is Verdict.DROP


def test_cost_aware_svip_resets_each_round() -> None:
    amap = AcceptanceMap((0.0, 1.0), (0.9, 0.5), (0.9, 0.5))
    policy = CostAwareSvip(CHEAP, amap, rate=15.0)
    first = [policy.judge(step(n, 0.2)) for n in range(1, 6)]
    again = [policy.judge(step(n, 0.2)) for n in range(1, 6)]
    assert first == again


def test_cost_aware_svip_rejects_a_bad_rate() -> None:
    with pytest.raises(ValueError, match="rate"):
        CostAwareSvip(CHEAP, AcceptanceMap((0.0,), (0.5,), (0.5,)), rate=0.0)


def named(traces: list[PromptTrace]) -> list[PromptTrace]:
    return [replace(t, prompt_id=f"p{i}") for i, t in enumerate(traces)]


def test_held_out_validation_measures_how_a_choice_flatters_itself() -> None:
    """Prompts alternate between text the draft always gets right and text it never does:
    one fold's choice is made on the other kind of text, so where it was chosen it looks
    better than where it is replayed (each fold judged on prompts it was not chosen on)."""
    easy, hard = [True] * 200, [False] * 200
    traces = named([make_trace(m, prompt_tokens=30) for m in (easy, hard) * 2])
    costs = make_costs(lambda b: 0.05 + 0.004 * b, draft=(0.006, 0.01, 0.014, 0.018))
    check = held_out(traces, costs, max_draft=16, folds=2)
    assert check is not None and len(check.choices) == 2
    assert "none" in check.choices and set(check.choices) != {"none"}
    assert check.in_sample > 1.0 > check.held_out
    assert check.optimism > 0.1
    assert held_out(traces[:1], costs, max_draft=16) is None


def test_a_choice_records_its_validation_and_survives_storage() -> None:
    traces = named(synthetic_traces(n=6))
    chosen = choose(traces, CHEAP, max_draft=16)
    assert set(chosen.validation) == {"in_sample", "held_out", "choices"}
    assert len(chosen.validation["choices"]) == 3
    assert TemperatureChoice.from_dict(chosen.to_dict()).validation == chosen.validation
    assert "held-out" in held_out_line(chosen.validation)


def candidate(policy: str, score: float) -> Candidate:
    return Candidate(policy, score, score, score, 2.0, 0.8)


def test_within_the_error_the_simplest_candidate_is_chosen() -> None:
    choice = Choice("svip-cost:10+lookup:5:16", 10.0, (
        candidate("svip-cost:10+lookup:5:16", 10.3), candidate("svip-cost:10", 10.2),
        candidate("svip:0.3", 10.0), candidate("lookup:5:16", 9.5), candidate("none", 9.0)))
    assert [complexity(c.policy) for c in choice.candidates] == [4, 3, 2, 1, 0]
    assert simplest_within(choice, 0.0) == "svip-cost:10+lookup:5:16"
    assert simplest_within(choice, 0.01) == "svip-cost:10"
    assert simplest_within(choice, 0.04) == "svip:0.3"
    assert simplest_within(choice, 0.09) == "lookup:5:16"
    assert simplest_within(choice, 0.2) == "none"
