"""The live `auto`: it follows the machine's costs (synthetic cost models drive the simulator's
rounds, whose times are all it learns from), keeps exploration within its share, stays
lossless on real tiny models, and stores what it learnt for the next session."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from svip_local import Engine, SamplingParams
from svip_local.bench.simulate import ReplayState, replay_round
from svip_local.bench.traces import PromptTrace
from svip_local.calibration import (
    AcceptanceMap,
    Calibration,
    CostModel,
    Fingerprint,
    PairIdentity,
    TemperatureChoice,
    store,
)
from svip_local.calibration.live import (
    LiveAcceptance,
    LiveCosts,
    LiveModel,
    default_costs,
    entropy_bin,
)
from svip_local.policies.base import StepStats, Verdict
from svip_local.policies.live import EXPLORE_SHARE, STALE_TOKENS, LiveAuto
from svip_local.policies.round_plan import RoundPlan
from svip_local.round_result import RoundResult
from svip_local.sampling import acceptance_chance
from svip_local.transcript import Transcript
from svip_local.tree import MAX_CANDIDATES
from tests.fast.test_engine_sampling import (
    P_THRESHOLD,
    PARAMS,
    RUNS,
    chi_square_p,
    exact_pair_distribution,
)
from tests.support.sim import make_costs, make_trace

CHEAP = make_costs(lambda b: 0.050 + 0.001 * (b - 1), draft=(0.004, 0.006, 0.008, 0.010))
EXPENSIVE = make_costs(lambda b: 0.050 * b, draft=(0.030, 0.055, 0.080, 0.105))


class RecordingAuto(LiveAuto):
    """`auto` that keeps the plan of its last round (what the tests check)."""

    plan: RoundPlan

    def decide(self, transcript: Transcript | None, room: int, remaining: int) -> RoundPlan:
        self.plan = super().decide(transcript, room, remaining)
        return self.plan


def arm(plan: RoundPlan) -> str:
    return "explore" if plan.explore else plan.arm


def auto(model: LiveModel, *, has_draft: bool = True) -> RecordingAuto:
    return RecordingAuto(model, max_draft=16, max_copy=64, has_draft=has_draft)


def first_plan(strategy: LiveAuto, context: np.ndarray | None, room: int,
               remaining: int) -> RoundPlan:
    transcript = None if context is None else Transcript(context, capacity=len(context))
    return strategy.decide(transcript, room, remaining)


def with_alternatives(trace: PromptTrace) -> PromptTrace:
    """The trace with the draft's best candidates at each position: its own token at 0.6,
    then the target's where they differ (else token 7) at 0.3, then six more at 0.01."""
    n = len(trace.target)
    ids = np.tile(np.arange(MAX_CANDIDATES, dtype=np.int32) + 6, (n, 1))
    ids[:, 0] = trace.draft
    ids[:, 1] = np.where(trace.draft == trace.target, 7, trace.target)
    probs = np.full((n, MAX_CANDIDATES), 0.01, np.float16)
    probs[:, 0], probs[:, 1] = 0.6, 0.3
    return replace(trace, top_ids=ids, top_probs=probs)


def live_run(costs: CostModel, rounds: int, *, prior: CostModel | None = None,
             accept_every: int = 5, alternatives: bool = False
             ) -> tuple[LiveAuto, list[dict[str, Any]]]:
    """`rounds` replayed rounds of `auto` on a trace whose draft matches the target except at
    every `accept_every`-th position (where, with `alternatives`, the draft's second choice
    is the target's): from no knowledge at all (default priors), or from a calibration's cost
    model `prior`."""
    n = rounds * 20
    trace = make_trace([i % accept_every != 0 for i in range(n)], budget=n)
    if alternatives:
        trace = with_alternatives(trace)
    model = LiveModel.start(LiveCosts.from_model(prior), "test") if prior else \
        LiveModel.start(default_costs(), "defaults")
    strategy = auto(model).for_sampling(SamplingParams())
    # The context the rounds see: a prompt, then the path (no n-gram repeats: nothing to copy).
    context = np.concatenate([np.arange(trace.prompt_tokens), trace.target]).astype(np.int32)
    transcript = Transcript.of_sequence(context, trace.prompt_tokens)
    state = ReplayState(0, trace.prompt_tokens)
    log = []
    for _ in range(rounds):
        result = replay_round(trace, transcript, state, 16, strategy, costs, n - state.j)
        log.append({"arm": arm(strategy.plan), "start": state.j,
                    "drafted": len(result.proposed),
                    "accepted": result.accepted, "nodes": result.nodes,
                    "spent": result.draft_s + result.verify_s})
        state.j += result.accepted + 1
        state.seq_len += result.accepted + 1
    return strategy, log


def test_cheap_verification_turns_auto_to_drafting() -> None:
    strategy, log = live_run(CHEAP, 120, prior=CHEAP)
    first_draft = next(i for i, r in enumerate(log) if r["arm"] == "draft")
    assert first_draft < 20
    late = log[60:]
    assert sum(r["arm"] == "draft" for r in late) >= 0.9 * len(late)
    assert strategy.report()["choice"] == "draft"


def test_expensive_verification_turns_auto_to_the_target_alone() -> None:
    strategy, log = live_run(EXPENSIVE, 400, prior=EXPENSIVE)
    late = log[40:]
    assert sum(r["arm"] == "none" for r in late) >= 0.9 * len(late)
    assert all(r["arm"] in ("none", "explore") for r in late)
    assert strategy.report()["choice"] == "none"


def test_a_wrong_prior_is_unlearnt_by_exploring() -> None:
    """Told verification is expensive (a stale calibration) on a machine where it is cheap,
    auto explores short drafts, measures that they pay, and turns to drafting."""
    cheap_catchup = (0.0, 0.0002, 0.0)
    strategy, log = live_run(replace(CHEAP, draft_prefill_s=cheap_catchup), 1000,
                             prior=replace(EXPENSIVE, draft_prefill_s=cheap_catchup))
    assert log[0]["arm"] == "none"
    first_draft = next(i for i, r in enumerate(log) if r["arm"] == "draft")
    assert first_draft < 400
    assert sum(r["arm"] == "draft" for r in log[-200:]) >= 180


@pytest.mark.parametrize("catchup", [0.0002, 0.01])
def test_exploration_stays_within_its_share(catchup: float) -> None:
    """Where drafting loses, the rounds that explore it cost at most EXPLORE_SHARE of the
    time, by the cost model's own prices (the target alone: verify(1) a round), the draft's
    catch-up on what it missed included. Where that catch-up is cheap, it does explore."""
    costs = replace(EXPENSIVE, draft_prefill_s=(0.0, catchup, 0.0))
    strategy, log = live_run(costs, 2000, prior=costs)
    t1 = costs.verify(1, 0)
    explored = [r for r in log if r["arm"] == "explore"]
    lost = sum(max(0.0, r["spent"] - (r["accepted"] + 1) * t1) for r in explored)
    total = sum(r["spent"] for r in log)
    assert lost <= EXPLORE_SHARE["draft"] * total
    assert strategy.report()["explore_share"]["draft"] == pytest.approx(lost / total)
    if catchup < 0.001:
        assert len(explored) >= 5, "auto must keep checking whether drafting started to pay"


def first_arm(lag: int, remaining: int, catchup: float) -> str:
    """The arm the first round of a generation takes on the CHEAP machine (drafting pays),
    with the draft `lag` tokens behind and `remaining` tokens left to generate."""
    model = LiveModel.start(LiveCosts.from_model(CHEAP), "test")
    strategy = auto(model).for_sampling(SamplingParams())
    strategy.costs.catchup = catchup
    return arm(first_plan(strategy, np.arange(lag + 1, dtype=np.int32), 16, remaining))


def test_a_long_catch_up_is_bought_only_with_enough_reply_left() -> None:
    """Switching to drafting costs the draft's catch-up once: worth it over a long reply, not
    for the last few tokens of one (and a cheap catch-up is worth it either way)."""
    assert first_arm(1000, 20_000, catchup=0.01) == "draft"
    assert first_arm(1000, 20, catchup=0.01) == "none"
    assert first_arm(1000, 20, catchup=0.00001) == "draft"


def jump_machine(first: float, then: float) -> LiveAuto:
    """`auto` where a second verified token costs a jump and each further one little (a CPU's
    curve: 39, 72, 95, 145, 154 ms for 1, 2, 4, 8, 16), with drafted tokens accepted at rate
    `first`, and each after an accepted one at rate `then` (no observation yet)."""
    verify = [0.05] + [0.08 + 0.005 * (b - 2) for b in range(2, 18)]
    model = LiveModel.start(LiveCosts(verify, step=0.005, step_weight=2.0, catchup=0.0001),
                            "test")
    strategy = auto(model).for_sampling(SamplingParams())
    accept = strategy.accept
    accept.hits = [t * first for t in accept.tries]
    accept.next_hits = [t * then for t in accept.next_tries]
    return strategy


def test_the_prediction_counts_on_runs_of_accepted_tokens() -> None:
    """Where the second token's jump in verification cost makes short drafts lose, drafting
    pays only through long accepted runs: at the same first-token rate, a chain whose tokens
    follow accepted ones at 0.95 drafts, and one of independent tokens does not."""
    runs, independent = jump_machine(0.5, 0.95), jump_machine(0.5, 0.5)
    context = np.arange(2, dtype=np.int32)
    assert arm(first_plan(runs, context, 16, 1000)) == "draft"
    assert arm(first_plan(independent, context, 16, 1000)) != "draft"


@pytest.mark.parametrize(("rounds", "drafts"), [(3, True), (20, False)])
def test_a_few_unlucky_rounds_do_not_outweigh_the_prediction(rounds: float,
                                                              drafts: bool) -> None:
    """Drafting rounds that lost 4 tokens each, where the prediction says drafting gains:
    three of them (one hard sentence) leave drafting on, twenty turn it off."""
    strategy = jump_machine(0.5, 0.95)
    strategy.accept.gain, strategy.accept.gain_weight = -4.0, rounds
    assert (arm(strategy.decide(None, 16, 10_000)) == "draft") is drafts


def test_a_replys_first_verification_is_not_learnt_as_the_targets_price() -> None:
    """Right after the prompt a verification also pays for leaving the prompt's batch shape
    (over RPC 185-1500 ms where a steady one takes 52): learnt, it made the target alone look
    dear and `auto` drafted where drafting loses."""
    model = LiveModel.start(LiveCosts.from_model(CHEAP), "test")
    strategy = auto(model).for_sampling(SamplingParams())
    steady = strategy.costs.verify_at(1)
    for seconds in (30 * steady, 2 * steady):
        plan = strategy.decide(None, 0, 1000)  # no room: the target alone
        strategy.learn(plan, RoundResult((), 0, 7, False, 0.0, seconds, 0, 0, 0.0))
        if seconds > 2 * steady:
            assert strategy.costs.verify_at(1) == steady
    assert strategy.costs.verify_at(1) == pytest.approx(2 * steady)


def test_a_stale_measurement_gives_way_to_the_prediction() -> None:
    """Drafting measured a loss, then the reply moved on without drafting: after several
    STALE_TOKENS the text that loss was measured on is far behind, and the prediction (here:
    drafting pays) decides again."""
    strategy = jump_machine(0.5, 0.95)
    strategy.accept.gain, strategy.accept.gain_weight = -2.0, 20.0
    arms = []
    for _ in range(int(4 * STALE_TOKENS)):
        plan = strategy.decide(None, 16, 10_000)
        arms.append(arm(plan))
        strategy.learn(plan, RoundResult((), 0, 7, False, 0.0, 0.05, 0, 0, 0.0))
    assert arms[0] != "draft" and arms[-1] == "draft"
    assert arms.index("draft") > STALE_TOKENS / 4, "a fresh measurement decides at first"


def test_sampled_acceptance_is_learnt_from_the_rejection_tests_chances() -> None:
    """Drafted tokens 0 and 1 tested, 0 accepted with chance 0.9 and 1 rejected with chance
    0.3: the map counts 1.2 acceptances in two tries (outcomes would count 1), and the
    chance that a token follows an accepted one 0.3 (outcomes: 0)."""
    soft, hard = (LiveAcceptance.prior(None, 1.0) for _ in range(2))
    soft.observe_draft([0.1, 0.1, 0.1], 3, 1, (0.9, 0.3))
    hard.observe_draft([0.1, 0.1, 0.1], 3, 1)
    b, prior = entropy_bin(0.1), LiveAcceptance.prior(None, 1.0)
    assert soft.tries[b] == hard.tries[b] == prior.tries[b] + 2
    assert soft.hits[b] == pytest.approx(prior.hits[b] + 1.2)
    assert hard.hits[b] == pytest.approx(prior.hits[b] + 1.0)
    assert soft.next_hits[b] == pytest.approx(prior.next_hits[b] + 0.3)
    assert hard.next_hits[b] == pytest.approx(prior.next_hits[b])


def test_the_acceptance_chance_is_min_1_p_over_q() -> None:
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.25, 0.6, 0.15])
    assert [acceptance_chance(p, q, x) for x in range(3)] == pytest.approx([1.0, 0.5, 1.0])
    assert acceptance_chance(p, None, 1) == pytest.approx(0.3)


def test_the_live_rule_records_what_it_judged() -> None:
    """The rule drops a token the map says will be rejected (an exploring round keeps it:
    `test_round`), and records the entropies it judged for the acceptance map."""
    model = LiveModel.start(LiveCosts.from_model(EXPENSIVE), "test")
    strategy = auto(model).for_sampling(SamplingParams())
    policy = strategy.policy
    policy.set_prices(strategy.costs.table(18), strategy.costs.step,
                      strategy.accept.acceptance_map(), 20.0)
    assert policy.judge(StepStats(1, 6.0, 0.1)) is Verdict.DROP
    assert policy.entropies == [6.0]


@pytest.fixture(autouse=True)
def _own_calibration_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with nothing stored: what one stores, only it reads."""
    monkeypatch.setenv("SVIP_LOCAL_CALIBRATION_DIR", str(tmp_path / "calibration"))


@pytest.fixture
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Engine:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1) as eng:
        yield eng


def test_a_new_engine_probes_then_stores_and_the_next_starts_warm(
        tiny_target: Path, tiny_draft_noisy: Path, engine: Engine) -> None:
    model = engine.live_model()
    assert model.source == "probe"
    curve = model.costs["greedy"].prior
    assert all(v > 0 for v in curve) and curve[15] >= curve[0]
    done = engine.complete("The quick brown fox", max_tokens=40, ignore_eos=True)
    live = done.stats.live
    assert live is not None and sum(live["rounds"].values()) == done.stats.rounds
    assert done.stats.policy.startswith("auto → ")
    assert store.live_path(engine.pair, engine.machine).is_file()
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1) as again:
        warm = again.live_model()
        assert warm.source == "stored"
        assert warm.costs["greedy"].to_dict() == model.costs["greedy"].to_dict()


@pytest.mark.parametrize("n_ctx", [64, 100])
def test_a_first_run_probes_within_a_small_context(tiny_target: Path, tiny_draft_noisy: Path,
                                                   n_ctx: int) -> None:
    """The probe times up to max_copy + 1 rows over 64 cached tokens; a context that holds
    neither is probed within it, and the first `auto` reply runs instead of failing."""
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=n_ctx, n_threads=1) as small:
        model = small.live_model()
        done = small.complete("The quick brown fox", max_tokens=12, ignore_eos=True)
    curve = model.costs["greedy"].prior
    assert model.source == "probe" and all(v > 0 for v in curve)
    assert done.stats.generated == 12 and done.stats.policy.startswith("auto")


def test_forgetting_starts_as_a_first_run_despite_what_is_stored(
        tiny_target: Path, tiny_draft_noisy: Path, engine: Engine) -> None:
    engine.complete("The quick brown fox", max_tokens=24, ignore_eos=True)
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1) as again:
        stored = again.live_model()
        assert stored.source == "stored"
        fresh = again.forget_live()
        assert again.live_model() is fresh and fresh is not stored
        assert fresh.source == "probe" and fresh.calibration is None and not fresh.acceptance


def test_probe_can_be_skipped_and_a_damaged_store_is_ignored(
        tiny_target: Path, tiny_draft_noisy: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1, probe=False) as eng:
        assert eng.live_model().source == "defaults"
        path = store.live_path(eng.pair, eng.machine)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"format": 2, "costs": {}}')
    with caplog.at_level(logging.WARNING), \
            Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1) as eng:
        assert eng.live_model().source == "probe"
    assert "ignoring live estimates" in caplog.text


def test_auto_without_a_draft_never_drafts(tiny_target: Path) -> None:
    with Engine(tiny_target, n_ctx=256, n_threads=1) as alone:
        done = alone.complete("Once upon a time, once upon a time", max_tokens=60,
                              ignore_eos=True)
    assert done.stats.live is not None and done.stats.live["rounds"]["draft"] == 0
    # Whatever it verified beyond the target's own tokens was copied from the context.
    copied = sum(n for n in done.stats.draft_lengths if n)
    assert done.stats.drafted == copied and (copied == 0 or done.stats.lookup_rounds > 0)


class FixedCostAuto(LiveAuto):
    """`auto` on an injected machine: it learns acceptance from the real rounds, but its
    costs and the gain of drafting stay the injected ones (a tiny model's real costs would
    make drafting pointless, and the tests need drafted rounds)."""

    def learn(self, plan: RoundPlan, result: RoundResult) -> None:
        costs, gain = self.costs.to_dict(), (self.accept.gain, self.accept.gain_weight)
        super().learn(plan, result)
        vars(self.costs).update(vars(LiveCosts.from_dict(costs)))  # estimates as injected
        self.accept.gain, self.accept.gain_weight = gain


def drafting_auto() -> LiveAuto:
    """`auto` on a machine where drafting pays: verification costs nothing per extra token,
    a draft step a tenth of a target step."""
    costs = LiveCosts([0.01] * 65, step=0.001, step_weight=2.0, catchup=0.0001)
    return FixedCostAuto(LiveModel.start(costs, "test"), max_draft=16, max_copy=64,
                         has_draft=True)


def test_auto_sampling_keeps_the_target_distribution(engine: Engine) -> None:
    prompt = engine.tokenize("Once upon a time")
    plan = drafting_auto()
    counts: Counter[tuple[int, int]] = Counter()
    drafted = 0
    for seed in range(RUNS):
        done = engine.complete(prompt, max_tokens=2, policy=plan, ignore_eos=True,
                               sampling=SamplingParams(**PARAMS, seed=seed))
        counts[done.tokens[:2]] += 1
        drafted += done.stats.drafted
    assert drafted > RUNS // 4, "the test must exercise drafted rounds"
    assert chi_square_p(counts, exact_pair_distribution(engine, prompt)) > P_THRESHOLD


def test_auto_greedy_equals_the_target_alone_while_it_drafts(engine: Engine) -> None:
    plan = drafting_auto()
    for prompt in ("Hello there, how are", "def main():\n    "):
        alone = engine.complete(prompt, max_tokens=60, policy="none", ignore_eos=True)
        spec = engine.complete(prompt, max_tokens=60, policy=plan, ignore_eos=True)
        assert spec.tokens == alone.tokens and spec.text == alone.text
        assert spec.stats.drafted > 0 or spec.stats.lookup_rounds > 0


def test_auto_learns_acceptance_from_what_it_drafts(engine: Engine) -> None:
    plan = drafting_auto()
    before = plan.model.acceptance_for(0.0).tries[:]
    engine.complete("Hello there, how are", max_tokens=60, policy=plan, ignore_eos=True)
    after = plan.model.acceptance_for(0.0).tries
    assert sum(after) > sum(before)
    assert np.all(np.asarray(after) >= np.asarray(before) - 1e-9)


def test_auto_widens_its_drafts_only_where_the_calibrated_choice_does() -> None:
    from svip_local.policies import Cape
    from svip_local.policies.live import calibrated_expander

    amap = AcceptanceMap((0.0, 1.0), (0.9, 0.5), (0.8, 0.4))
    cal = Calibration(PairIdentity("t.gguf", 1, "d.gguf", 1), Fingerprint("cpu", "cpu", "0/0", 1),
                      TemperatureChoice(0.0, "svip:0.3+cape:8", amap, 12.5), CHEAP,
                      [TemperatureChoice(1.0, "svip:0.2", amap, 8.0)])
    greedy = calibrated_expander(cal, 0.0)
    assert isinstance(greedy, Cape) and greedy.nodes == 8
    assert calibrated_expander(cal, 0.9) is None
    assert calibrated_expander(None, 0.0) is None


# A row costs two fifths of a decode: drafting long accepted runs pays, a leaf worth 0.3
# tokens or less does not.
DEAR_ROWS = make_costs(lambda b: 0.050 + 0.020 * (b - 1), draft=(0.002, 0.003, 0.004, 0.005))


@pytest.mark.parametrize(("costs", "widens"), [(CHEAP, True), (DEAR_ROWS, False)])
def test_without_a_calibration_greedy_drafts_widen_where_rows_are_cheap(
        costs: CostModel, widens: bool) -> None:
    """No calibration: the drafting rounds' tree is priced by the live costs, so the same
    text gets leaves where a row is nearly free and none where it costs 0.4 of a decode;
    the leaves catch the target's token where the chain missed it."""
    strategy, log = live_run(costs, 80, prior=costs, alternatives=True)
    drafting = [r for r in log if r["arm"] == "draft"]
    assert len(drafting) >= 40
    assert any(r["nodes"] > r["drafted"] for r in drafting) == widens
    # A round whose last accepted token stands where the draft's own token was wrong (every
    # 5th position) accepted a leaf there.
    leaves = [r for r in drafting if r["accepted"] and (r["start"] + r["accepted"] - 1) % 5 == 0]
    assert (len(leaves) >= 10) == widens
    # The acceptance map learns the chain's tokens (4 in 5 right), not the leaves' catches
    # (counted as the chain's, every token looked accepted: 0.9999).
    assert 0.65 < strategy.accept.mean_accept() < 0.85


def test_live_trees_only_greedy_and_only_without_a_calibration(engine: Engine) -> None:
    from svip_local.policies.live import LiveCape

    model = LiveModel.start(LiveCosts.from_model(CHEAP), "test")
    plan = auto(model)
    assert isinstance(plan.for_sampling(SamplingParams()).expander, LiveCape)
    assert plan.for_sampling(SamplingParams(temperature=1.0)).expander is None
    alone = auto(model, has_draft=False)
    assert alone.for_sampling(SamplingParams()).expander is None
    assert engine.calibration() is None  # the tiny pair is not calibrated here
    engine_auto = engine.make_policy("auto").for_sampling(SamplingParams())
    assert isinstance(engine_auto.expander, LiveCape)
    done = engine.complete("The quick brown fox", max_tokens=32, ignore_eos=True)
    assert done.tokens == engine.complete("The quick brown fox", max_tokens=32,
                                          ignore_eos=True, policy="none").tokens


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        *parents, last = path
        for key in parents:
            data = data[key]
        data[last] = value
    return edit


@pytest.mark.parametrize(("edit", "why"), [
    (_set(["costs", "greedy", "verify", 0], float("nan")), "seconds out of range: nan"),
    (_set(["costs", "greedy", "step"], 1e308), "seconds out of range: 1e\\+308"),
    (_set(["costs", "greedy", "catchup"], -1.0), "seconds out of range: -1"),
    (_set(["costs", "greedy", "weight", 1], float("inf")), "weights out of range"),
    (_set(["acceptance", "0", "gain"], -1e308), "gain out of range"),
    (_set(["acceptance", "0", "hits", 0], 1e6), "acceptance counts out of range"),
    (_set(["acceptance", "0", "copies", "weights", 2], float("nan")), "copy model weights"),
    (_set(["acceptance", "0", "copies", "precision", 0], 0.0), "precisions positive"),
    (_set(["acceptance", "0", "tries"], "many"), "could not convert"),
    (_set(["format"], 1), "live state format 1, expected 2"),
], ids=["nan-time", "huge-step", "negative-catchup", "inf-weight", "huge-gain", "hits-over-cap",
        "nan-copy-weight", "zero-precision", "not-numbers", "old-format"])
def test_a_bad_live_file_is_named_moved_aside_and_never_trusted(
        tiny_target: Path, tiny_draft_noisy: Path, caplog: pytest.LogCaptureFixture,
        edit: Callable[[dict[str, Any]], None], why: str) -> None:
    """Valid JSON with values no machine measures (NaN, 1e308, a zero precision) made every
    later `auto` run fail without naming the file: it is refused by name, moved aside, and
    this session's estimates replace it."""
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1, probe=False) as eng:
        eng.complete("The quick brown fox", max_tokens=8, ignore_eos=True)
        path = store.live_path(eng.pair, eng.machine)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING), \
            Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1, probe=False) as eng:
        assert eng.live_model().source == "defaults"
        done = eng.complete("The quick brown fox", max_tokens=8, ignore_eos=True)
        assert done.finish_reason == "length"
    assert re.search(f"ignoring live estimates {re.escape(str(path))} \\(.*{why}", caplog.text)
    assert path.with_name(path.name + ".bad").is_file()
    assert json.loads(path.read_text())["format"] == 2  # this session's, valid again


def test_rows_are_priced_by_the_batch_they_join() -> None:
    """A machine where the first rows of a batch are nearly free and the rows past 8 each
    cost a decode's worth: alone, `auto` drafts; in a batch already holding 12 rows of
    other requests, every extra row is dear and it drafts no more than an exploring round's
    few tokens."""
    curve = [0.010 + 0.0005 * min(b - 1, 7) + 0.008 * max(0, b - 8) for b in range(1, 66)]
    costs = LiveCosts.from_probe(range(1, 66), curve, 0.001, 0.0001)
    strategy = auto(LiveModel.start(costs, "test")).for_sampling(SamplingParams())
    alone = first_plan(strategy, None, 16, 200)
    strategy.prices.others = 12
    shared = first_plan(strategy, None, 16, 200)
    assert alone.arm == "draft" and not alone.explore and alone.draft >= 8
    assert shared.arm == "none" or shared.explore
    assert shared.draft < alone.draft
    assert strategy.prices.verify_at(1) == pytest.approx(curve[12] - curve[11])
    strategy.prices.waiting = 3  # a draft step holds up three other requests too
    assert strategy.prices.step == pytest.approx(4 * strategy.costs.step)
