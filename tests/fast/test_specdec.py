"""The learnt acceptance head and `specdec`: training reaches a known rule, a head stays with
the files it was trained for, and `specdec` is lossless on real llama.cpp hidden states."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from svip_local import Engine, SamplingParams
from svip_local.bench import predictors
from svip_local.bench.simulate import simulate
from svip_local.bench.traces import PromptTrace, record_trace
from svip_local.calibration import (
    AcceptanceHead,
    AcceptanceMap,
    Calibration,
    PairIdentity,
    TemperatureChoice,
    store,
)
from svip_local.calibration.head import (
    Examples,
    HeadMismatch,
    TrainSettings,
    _gradients,
    dump_heads,
    load_heads,
    log_loss,
    train,
)
from svip_local.errors import DecodeError, InvalidRequestError
from svip_local.native import Outputs
from svip_local.policies import (
    CostAwareSpecDec,
    CostAwareSvip,
    NoDraft,
    SpecDec,
    StepStats,
    Verdict,
)
from tests.fast.test_engine_sampling import chi_square_p, exact_pair_distribution, sampled_pairs
from tests.support.sim import make_costs

pytestmark = pytest.mark.usefixtures("own_calibration_store")

PROMPTS = ["The quick brown fox", "In the morning the village was", "Once upon a time",
           "She opened the door and", "The river ran past the mill"]
COSTS = make_costs(lambda b: 0.1 + 0.01 * b)


# -- training ---------------------------------------------------------------------------------

def synthetic(n: int, d: int, rng: np.random.Generator, w: np.ndarray, soft: bool = False
              ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Runs of 50 positions whose acceptance is a rule of the hidden state alone (the
    entropy features are noise): a sign (separable) or a logistic chance (`soft`)."""
    hidden = rng.standard_normal((n, d)).astype(np.float32)
    score = hidden @ w
    label = 1 / (1 + np.exp(-score)) if soft else (score > 0).astype(np.float64)
    entropy, top = rng.uniform(0, 3, n), rng.uniform(0.05, 1, n)
    return [(hidden[i:i + 50], entropy[i:i + 50], top[i:i + 50], label[i:i + 50])
            for i in range(0, n, 50)]


def test_training_reaches_a_separable_rule() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(16)
    head = train(Examples.of_runs(synthetic(3000, 16, rng, w)),
                 Examples.of_runs(synthetic(600, 16, rng, w)), 0.0,
                 TrainSettings(components=16))  # the rule spans every direction
    test = Examples.of_runs(synthetic(2000, 16, rng, w))
    p = head.predict_batch(test.hidden, test.scalars[:, 0], test.scalars[:, 3])[:, 0]
    assert ((p > 0.5) == (test.labels[:, 0] > 0.5)).mean() > 0.95
    # One step's prediction is the batch's.
    for i in range(5):
        one = head.predict(test.hidden[i], float(test.scalars[i, 0]), float(test.scalars[i, 3]))
        assert one[0] == pytest.approx(p[i], abs=1e-5)


def test_training_recovers_soft_chances_and_the_next_tokens() -> None:
    """Soft labels (a sampled trace's chances) are learnt as chances, not as classes; the
    second output learns the next position's chance where this one was accepted."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal(8) / 2
    head = train(Examples.of_runs(synthetic(4000, 8, rng, w, soft=True)),
                 Examples.of_runs(synthetic(800, 8, rng, w, soft=True)), 1.0)
    test = Examples.of_runs(synthetic(2000, 8, rng, w, soft=True))
    p = head.predict_batch(test.hidden, test.scalars[:, 0], test.scalars[:, 3])
    assert np.abs(p[:, 0] - test.labels[:, 0]).mean() < 0.06
    assert log_loss(p[:, 0], test.labels[:, 0]) < log_loss(
        np.full(len(test), test.labels[:, 0].mean()), test.labels[:, 0]) - 0.05
    # The next position is independent of this one here: its output learns the base rate.
    assert p[:, 1].mean() == pytest.approx(test.labels[:, 1][:-1].mean(), abs=0.05)


def test_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(2)
    n_in, width, blocks = 5, 4, 2
    # Small weights: logits stay where log_loss's clipping does not flatten the loss.
    params = [rng.standard_normal((n_in, width)) * 0.4, rng.standard_normal(width) * 0.4]
    for _ in range(blocks):
        params += [rng.standard_normal((width, width)) * 0.4, rng.standard_normal(width) * 0.4]
    params += [rng.standard_normal((width, 2)) * 0.4, rng.standard_normal(2) * 0.4,
               rng.standard_normal((n_in, 2)) * 0.4]  # output layer, bias, linear path
    x = rng.standard_normal((7, n_in))
    y = rng.uniform(0, 1, (7, 2))
    wt = np.c_[np.ones(7), rng.uniform(0, 1, 7)]

    def loss() -> float:
        from svip_local.calibration.head import _forward
        z = _forward(params, x, blocks)[0]
        return sum(log_loss(1 / (1 + np.exp(-z[:, k])), y[:, k], wt[:, k]) for k in (0, 1))

    grads = _gradients(params, x, y, wt, blocks)
    for p, g in zip(params, grads, strict=True):
        flat, gflat = p.reshape(-1), g.reshape(-1)
        for i in range(0, flat.size, 3):
            old = flat[i]
            flat[i] = old + 1e-6
            up = loss()
            flat[i] = old - 1e-6
            down = loss()
            flat[i] = old
            assert gflat[i] == pytest.approx((up - down) / 2e-6, rel=1e-4, abs=1e-6)


def test_a_head_is_refused_for_other_files() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal(8)
    head = train(Examples.of_runs(synthetic(500, 8, rng, w)),
                 Examples.of_runs(synthetic(200, 8, rng, w)), 0.0)
    mine = asdict(PairIdentity("t.gguf", 10, "d.gguf", 5))
    raw = dump_heads([head], mine)
    (back,) = load_heads(raw, mine)
    x = rng.standard_normal(8).astype(np.float32)
    assert back.predict(x, 0.5, 0.5) == head.predict(x, 0.5, 0.5)
    with pytest.raises(HeadMismatch, match="trained for"):
        load_heads(raw, asdict(PairIdentity("t.gguf", 10, "other-draft.gguf", 5)))


def test_weighted_auc_counts_soft_labels_as_expected_draws() -> None:
    assert predictors.weighted_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert predictors.weighted_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert predictors.weighted_auc([0.5, 0.5], [0, 1]) == 0.5
    # A position that is accepted half the time counts half on each side.
    assert predictors.weighted_auc([0.1, 0.5, 0.9], [0, 0.5, 1]) == 1.0


# -- on the tiny llama.cpp pair ---------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Engine:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1, policy="none") as eng:
        yield eng


def trace_of(engine: Engine, prompt: str, sampling: SamplingParams | None = None
             ) -> PromptTrace:
    ids = engine.tokenize(prompt)
    done = engine.complete(ids, max_tokens=80, policy=NoDraft(), ignore_eos=True,
                           sampling=sampling)
    return record_trace(engine, ids, done, prompt_id=prompt, category="qa", max_tokens=80,
                        sampling=sampling)


@pytest.fixture(scope="module")
def heads(engine: Engine) -> list[AcceptanceHead]:
    """Heads trained on the tiny pair's own traces (llama.cpp's hidden states), greedy and
    at temperature 1."""
    out = []
    for t in (0.0, 1.0):
        sampling = None if t == 0 else SamplingParams(temperature=t, seed=4)
        head = predictors.fit_head([trace_of(engine, p, sampling) for p in PROMPTS], t)
        assert head is not None and head.n_embd == engine.draft_model.n_embd  # type: ignore[union-attr]
        out.append(head)
    return out


def calibration(engine: Engine, heads: list[AcceptanceHead] | None) -> Calibration:
    amap = AcceptanceMap((0.0, 1.0), (0.9, 0.5), (0.8, 0.4))
    cal = Calibration(
        PairIdentity.of(engine.target_model.path, engine.draft_model.path),  # type: ignore[union-attr]
        engine.machine,
        TemperatureChoice(0.0, "specdec:0.5", amap, 12.5, head_threshold=0.6, head_rate=11.0),
        COSTS, [TemperatureChoice(1.0, "specdec-cost:9", amap, 8.0, head_threshold=0.4)],
        {"max_tokens": 80})
    if heads:
        cal.attach_heads(heads)
    return cal


def test_the_draft_context_outputs_hidden_states_only_when_asked(engine: Engine) -> None:
    ctx = engine.draft_ctx
    assert ctx is not None
    ctx.clear()
    ctx.decode(engine.tokenize("The quick"), )
    with pytest.raises(DecodeError, match="no hidden state"):
        ctx.hidden()
    ctx.output_hidden(True)
    ctx.truncate(1)
    ctx.decode(engine.tokenize("The quick", add_special=False))
    h = ctx.hidden().copy()
    assert h.shape == (engine.draft_model.n_embd,) and np.isfinite(h).all()  # type: ignore[union-attr]
    assert np.abs(h).max() > 0
    # A long batch with hidden states on is split (llama.cpp would output every row): the
    # last row's logits and hidden state are those of one batch that outputs them all.
    long = engine.tokenize("The quick brown fox jumps over the lazy dog and runs far away")
    assert len(long) >= 10
    ctx.clear()
    ctx.decode(long, Outputs.ALL)
    want_h, want_l = ctx.hidden().copy(), ctx.logits().copy()
    ctx.clear()
    ctx.decode(long, Outputs.LAST)
    assert ctx.embeddings and ctx.tokens == long and ctx.pos_max() == len(long) - 1
    assert np.allclose(ctx.hidden(), want_h, atol=1e-3)
    assert np.allclose(ctx.logits(), want_l, atol=1e-3)
    ctx.output_hidden(False)
    ctx.clear()


def test_stored_heads_come_back_with_their_calibration(engine: Engine,
                                                        heads: list[AcceptanceHead]) -> None:
    cal = calibration(engine, heads)
    store.save(cal)
    loaded = store.load(cal.pair, cal.machine)
    assert loaded is not None and [c.head is not None for c in loaded.choices] == [True, True]
    x = np.ones(heads[0].n_embd, np.float32)
    assert loaded.greedy.head.predict(x, 1.0, 0.5) == heads[0].predict(x, 1.0, 0.5)  # type: ignore[union-attr]
    greedy = engine.make_policy("specdec").for_sampling(SamplingParams()).policy
    assert isinstance(greedy, SpecDec) and greedy.h == 0.6  # the calibrated threshold
    hot = engine.make_policy("specdec-cost").for_sampling(SamplingParams(temperature=1)).policy
    assert isinstance(hot, CostAwareSpecDec) and hot.rate == 8.0  # no head rate: svip-cost's


def test_a_calibration_without_a_head_loads_and_specdec_says_what_is_missing(
        engine: Engine) -> None:
    cal = calibration(engine, None)
    store.save(cal)
    assert store.load(cal.pair, cal.machine) is not None
    greedy = engine.make_policy("svip-cost").for_sampling(SamplingParams()).policy
    assert isinstance(greedy, CostAwareSvip) and greedy.head is None and greedy.rate == 12.5
    with pytest.raises(InvalidRequestError, match="acceptance head.*svip-local calibrate"):
        engine.make_policy("specdec:0.5")


def test_a_head_for_other_files_is_ignored_with_a_warning(
        engine: Engine, heads: list[AcceptanceHead], caplog: pytest.LogCaptureFixture) -> None:
    cal = calibration(engine, heads)
    store.save(cal)
    other = asdict(PairIdentity(cal.pair.target, cal.pair.target_size, "other.gguf", 1))
    store.head_path(cal.pair, cal.machine).write_bytes(dump_heads(heads, other))
    with caplog.at_level(logging.WARNING):
        loaded = store.load(cal.pair, cal.machine)
    assert loaded is not None and loaded.heads() == []
    assert "acceptance head" in caplog.text and "trained for" in caplog.text
    with pytest.raises(InvalidRequestError, match="acceptance head"):
        engine.make_policy("specdec")


def test_specdec_without_any_calibration_says_how_to_make_one(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="svip-local calibrate"):
        engine.make_policy("specdec")


@pytest.mark.parametrize("spec", ["specdec:0.3", "specdec:0.8", "specdec-cost:5",
                                  "specdec-cost:20"])
def test_specdec_greedy_equals_target_alone(engine: Engine, heads: list[AcceptanceHead],
                                            spec: str) -> None:
    store.save(calibration(engine, heads))
    for prompt in PROMPTS[:3]:
        alone = engine.complete(prompt, max_tokens=60, policy="none", ignore_eos=True)
        spec_run = engine.complete(prompt, max_tokens=60, policy=spec, ignore_eos=True)
        assert spec_run.tokens == alone.tokens
        assert spec_run.stats.drafted > 0


def test_specdec_stops_where_the_threshold_says(engine: Engine,
                                                heads: list[AcceptanceHead]) -> None:
    """A higher h tolerates a likelier rejection: longer rounds."""
    store.save(calibration(engine, heads))
    mean = {}
    for h in (0.2, 0.9):
        stats = engine.complete(PROMPTS[0], max_tokens=80, policy=f"specdec:{h}",
                                ignore_eos=True).stats
        mean[h] = stats.drafted / stats.rounds
    assert mean[0.9] > mean[0.2]


def test_specdec_keeps_the_target_distribution(engine: Engine,
                                               heads: list[AcceptanceHead]) -> None:
    store.save(calibration(engine, heads))
    prompt = engine.tokenize("Once upon a time")
    exact = exact_pair_distribution(engine, prompt)
    assert chi_square_p(sampled_pairs(engine, prompt, "specdec:0.9"), exact) > 1e-3


@pytest.mark.parametrize("spec", ["specdec:0.3", "specdec:0.7", "specdec-cost:8"])
def test_replay_matches_live_for_specdec(engine: Engine, heads: list[AcceptanceHead],
                                         spec: str) -> None:
    """The simulator feeds the head the trace's hidden states (from one batched pass); the
    live round, those of its one-token decodes: the same rounds come out."""
    store.save(calibration(engine, heads))
    prompt = PROMPTS[1]
    trace = trace_of(engine, prompt)
    live = engine.complete(prompt, max_tokens=80, policy=spec, ignore_eos=True).stats
    sim = simulate(trace, engine.make_policy(spec), COSTS)
    assert sim.accepted_lengths == live.accepted_lengths
    for d_sim, d_live, acc in zip(sim.draft_lengths, live.draft_lengths,
                                  live.accepted_lengths, strict=True):
        assert d_sim == d_live if d_live == acc else d_sim > acc


def test_specdec_judges_every_kept_token() -> None:
    """Stop once 1 - prod(p) > h, keeping the token that crossed it."""

    class Fixed(AcceptanceHead):
        def predict(self, hidden, entropy, top_prob):  # type: ignore[no-untyped-def]
            return (top_prob, 0.5)

    z = np.zeros((1, 1), np.float32)
    head = Fixed(0.0, z, np.zeros((4, 1), np.float32), np.zeros(1, np.float32), [], z,
                 np.zeros(2, np.float32))
    policy = SpecDec(head, 0.5)
    x = np.zeros(1, np.float32)
    verdicts = [policy.judge(StepStats(n, 0.1, p, x)) for n, p in enumerate((0.9, 0.8, 0.6), 1)]
    # 1 - 0.9 = 0.1, 1 - 0.72 = 0.28, 1 - 0.432 = 0.568 > 0.5
    assert verdicts == [Verdict.CONTINUE, Verdict.CONTINUE, Verdict.STOP]
    assert math.isclose(policy._p, 0.432)


@pytest.mark.parametrize(("greedy_choice", "reads_head"), [("specdec:0.5", True),
                                                           ("specdec-cost:9", True),
                                                           ("svip:0.3", False)])
def test_calibrated_auto_reads_the_head_where_the_choice_does(
        engine: Engine, heads: list[AcceptanceHead], greedy_choice: str,
        reads_head: bool) -> None:
    cal = calibration(engine, heads)
    cal.greedy.choice = greedy_choice
    store.save(cal)
    engine._live = None  # start auto's estimates from this calibration
    try:
        auto = engine.make_policy("auto")
        greedy = auto.for_sampling(SamplingParams()).policy
        head = greedy.head  # type: ignore[attr-defined]
        assert (head is not None and head.temperature == 0.0) if reads_head else head is None
        assert greedy.wants_hidden is reads_head
        hot = auto.for_sampling(SamplingParams(temperature=1.0)).policy
        assert hot.head is not None and hot.head.temperature == 1.0  # type: ignore[attr-defined]
        alone = engine.complete(PROMPTS[2], max_tokens=60, policy="none", ignore_eos=True)
        live = engine.complete(PROMPTS[2], max_tokens=60, policy=auto, ignore_eos=True)
        assert live.tokens == alone.tokens
    finally:
        engine._live = None
