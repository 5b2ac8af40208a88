"""Copies priced by their evidence: the transcript's sources, the copier's matches and chains,
the copy model's learning, `auto`'s copy rounds (long, chained, explored at a copy's cost),
the oracle that copies, and copies from text the engine saw before."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from svip_local import Engine, SamplingParams
from svip_local.bench.simulate import oracle, simulate
from svip_local.bench.traces import PromptTrace, copy_walk
from svip_local.calibration.copies import (
    N_FEATURES,
    PRECISION_CAP,
    CopyEvidence,
    CopyModel,
    edit_odds,
    prior_copy_model,
)
from svip_local.calibration.live import LiveCosts, LiveModel
from svip_local.chat import ChatTemplate, fit_messages
from svip_local.config import EngineConfig
from svip_local.errors import InvalidRequestError
from svip_local.policies import PolicyContext, parse_policy
from svip_local.policies.live import EXPLORE_SHARE, EXPLORE_TOKENS, LiveAuto
from svip_local.policies.lookup import Copier, longest_match
from svip_local.policies.round_plan import Copy, RoundPlan
from svip_local.round_result import RoundResult
from svip_local.transcript import Transcript, check_regions
from tests.support.sim import make_costs

# A CPU-like machine: each verified row costs a tenth of a single decode.
ROWS = make_costs(lambda b: 0.05 + 0.005 * (b - 1))


def test_the_transcript_says_where_each_token_came_from() -> None:
    t = Transcript([1, 2, 3, 4, 5, 6], capacity=10, side=[9, 9],
                   regions=[(0, "system"), (2, "user"), (4, "assistant")])
    assert t.view().tolist() == [9, 9, 1, 2, 3, 4, 5, 6] and t.seq_len == 6
    assert [t.source_at(i) for i in range(8)] == ["earlier"] * 2 + ["prompt"] * 2 + \
        ["user"] * 2 + ["assistant"] * 2
    t.append(7)
    assert t.source_at(8) == "reply" and t.view()[-1] == 7 and t.seq_len == 7
    raw = Transcript([1, 2], capacity=4)
    assert raw.source_at(0) == "prompt"


@pytest.mark.parametrize(("regions", "message"), [
    ([(0, "robot")], "unknown message role 'robot'"),
    ([(3, "user"), (1, "assistant")], "out of order"),
    ([(7, "user")], "outside the prompt of 6 tokens"),
])
def test_bad_regions_are_refused(regions: list[tuple[int, str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_regions(regions, 6)


def test_the_longest_match_wins_then_the_most_recent() -> None:
    #        0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16
    a = np.array([5, 1, 2, 3, 7, 9, 1, 2, 3, 8, 0, 2, 3, 6, 5, 1, 2, 3], np.int32)
    # The end "5 1 2 3" matched at 0 (4 tokens, continuing with 7); "1 2 3" at 6 (3 tokens,
    # continuing with 8); "2 3" alone at 11 is below the minimum.
    src, length, support, dissent = longest_match(a, 3)
    assert (src, length) == (4, 4) and a[src] == 7
    assert (support, dissent) == (1, 1)
    assert longest_match(np.array([1, 2, 3, 4], np.int32), 3) is None
    equal = np.array([1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 3], np.int32)
    assert longest_match(equal, 3)[:2] == (7, 3)  # the most recent of equal matches


def test_the_copier_follows_its_chain_while_the_text_does() -> None:
    source = list(range(100, 140))
    context = [*source, 7, 8, *source[:5]]
    t = Transcript(context, capacity=200)
    copier = Copier()
    first = copier.find(t, 8)
    assert first is not None and first.evidence is not None
    assert first.tokens.tolist() == source[5:13]
    assert (first.evidence.match, first.evidence.depth) == (5, 0)
    for tok in source[5:9]:  # a round accepted 3 copied tokens and the target's own 4th
        t.append(tok)
    copier.advance(t, 4)
    chained = copier.find(t, 8)
    assert chained is not None and chained.evidence is not None
    assert chained.tokens.tolist() == source[9:17]
    assert (chained.evidence.match, chained.evidence.depth) == (9, 4)
    t.append(999)  # the text leaves the chain
    copier.advance(t, 1)
    assert copier.find(t, 8) is None  # and nothing else matches "999"


def test_a_renamed_token_weighs_more_with_each_replacement() -> None:
    """A rename replaces the old name at every use: the copier's evidence against copying it
    grows with each replacement (log-odds, not a rate capped at 1), and a deep chain's
    confidence does not count there, so the first-run model prices it lower each time while
    the tokens around it stay likely."""
    old, new = 50, 60
    source = [old if i % 10 == 5 else 100 + i for i in range(60)]
    t = Transcript([*source, 7, 8, *source[:4]], capacity=300)
    copier, model = Copier(), prior_copy_model(0.0)
    odds: list[float] = []
    chance: list[float] = []
    around: list[float] = []
    for i in range(4, 60):
        copy = copier.find(t, 16)
        if copy is not None and copy.evidence is not None and copy.tokens[0] == old:
            edits = copy.evidence.edits
            odds.append(0.0 if edits is None else float(edit_odds(edits[:1])[0]))
            chance.append(float(model.chances(copy.evidence, 1)[0]))
        elif copy is not None and copy.evidence is not None and copy.evidence.depth > 2:
            around.append(float(model.chances(copy.evidence, 1)[0]))
        t.append(new if source[i] == old else source[i])
        copier.advance(t, 1)
    assert len(odds) >= 4 and odds[0] == 0.0
    assert all(b > a for a, b in zip(odds, odds[1:], strict=False))  # each one weighs more
    assert all(b < a for a, b in zip(chance, chance[1:], strict=False))
    assert chance[-1] < 0.6 < 0.85 < min(around)
    counts = np.array([[2.0, 2.0], [1.0, 3.0], [3.0, 0.0]])
    assert edit_odds(counts).tolist() == pytest.approx([0.0, 0.0, math.log(4)])


def test_the_copy_model_learns_from_outcomes_and_chances() -> None:
    user = CopyEvidence(match=12, source="user")
    reply = CopyEvidence(match=3, source="reply")
    model = prior_copy_model(0.0)
    before = model.chances(user, 4).copy()
    for _ in range(30):
        model.observe(user, [1.0, 1.0, 1.0, 1.0])
        model.observe(reply, [0.0])
    after = model.chances(user, 4)
    assert np.all(after > before) and after[0] > 0.8
    assert model.chances(reply, 1)[0] < 0.3
    assert max(model.precision) <= PRECISION_CAP
    # Chances count as soft labels: a stream of 0.5s settles near 0.5.
    soft = prior_copy_model(1.0)
    for _ in range(200):
        soft.observe(reply, [0.5])
    assert soft.chances(reply, 1)[0] == pytest.approx(0.5, abs=0.05)
    # All at once (calibration) and one by one (live) agree roughly.
    batch = CopyModel.fit(prior_copy_model(0.0), [(user, [1.0] * 4), (reply, [0.0])] * 30)
    assert batch.chances(user, 1)[0] > 0.8 and batch.chances(reply, 1)[0] < 0.3


@pytest.mark.parametrize("bad", [[float("nan")] + [0.0] * 10, [200.0] + [0.0] * 10, [0.0]])
def test_a_copy_model_refuses_bad_weights(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        CopyModel(bad, [1.0] * len(bad))


def repeating_trace(n_prompt: int = 200, n: int = 160) -> PromptTrace:
    """A prompt of distinct tokens that ends as its copied stretch begins (a reply's opening
    fence, say), and a reply that repeats its second half but for an edit every 40 tokens
    the copy cannot know: the copies a code edit's reply makes of the pasted code."""
    pasted = np.arange(1000, 1000 + n_prompt, dtype=np.int32)
    start = n_prompt - n
    prompt = np.concatenate([pasted, pasted[start - 3:start]])
    target = pasted[start:].copy()
    target[20::40] += 5000
    return PromptTrace("edit", "fix", len(prompt), n, "length", target,
                       np.full(n, -1, np.int32), np.full(n, 3.0, np.float32),
                       np.full(n, 0.2, np.float32), np.zeros(n, np.bool_), prompt,
                       regions=((0, "user"),))


def live_auto(temperature: float = 0.0, *, has_draft: bool = True) -> LiveAuto:
    model = LiveModel.start(LiveCosts.from_model(ROWS), "test")
    return LiveAuto(model, max_draft=16, max_copy=64, has_draft=has_draft,
                    temperature=temperature)


def test_auto_copies_long_chained_stretches_from_the_first_round() -> None:
    """A first run (the prior copy model) copies the pasted text from its first round, in
    copies longer than a draft's 16 tokens, continuing each accepted copy's chain."""
    trace = repeating_trace()
    strategy = live_auto()
    sim = simulate(trace, strategy, ROWS)
    assert sim.draft_lengths[0] > 0  # the first round copies
    assert max(sim.draft_lengths) > 16
    assert sim.accepted >= 0.8 * sim.generated
    assert sim.rounds <= 20  # where the target alone needs 160


def test_a_fixed_lookup_is_bound_by_max_copy() -> None:
    with pytest.raises(InvalidRequestError, match=r"max_copy = 64"):
        parse_policy("lookup:4:65")
    with pytest.raises(InvalidRequestError, match=r"max_copy = 32"):
        parse_policy("lookup:4:64", PolicyContext(max_copy=32))
    with pytest.raises(InvalidRequestError, match="max_copy must be >= 1 and below n_batch"):
        EngineConfig(max_copy=512)


def test_a_copy_explores_at_a_copy_s_cost_beside_drafting_s_budget() -> None:
    """Where the model says copies lose, a short copy still explores, and its cost is only
    its rows: a draft exploration's budget spent on a catch-up does not stop it."""
    strategy = live_auto()
    strategy.costs.step = 1.0  # and drafting loses
    # Copies look hopeless to the model.
    strategy.accept.copies = CopyModel([-6.0] + [0.0] * (N_FEATURES - 1), [50.0] * N_FEATURES)
    strategy.explore_loss_s["draft"] = 1e9  # drafting's exploration budget is spent
    t = Transcript([*range(100, 140), *range(100, 110)], capacity=200)
    plan = strategy.decide(t, 60, 1000)
    assert plan == RoundPlan("lookup", plan.copy, explore=True, why=plan.why)
    assert plan.copy is not None and len(plan.copy.tokens) == EXPLORE_TOKENS["lookup"]
    strategy.explore_loss_s["lookup"] = 1e9  # and once its own budget is spent, it stops
    assert not strategy.decide(t, 60, 1000).explore
    assert set(EXPLORE_SHARE) == {"lookup", "draft"}


def test_the_oracle_copies_where_copies_pay() -> None:
    trace = repeating_trace()
    with_copies = oracle(trace, ROWS)
    without = oracle(trace, ROWS, max_copy=0)
    assert with_copies.time_s < 0.5 * without.time_s
    best_lookup = simulate(trace, parse_policy("lookup:4:64"), ROWS)
    assert with_copies.time_s <= best_lookup.time_s + 1e-12
    assert simulate(trace, live_auto(), ROWS).time_s >= with_copies.time_s - 1e-12


def test_the_walk_labels_copies_as_a_live_copier_would() -> None:
    trace = repeating_trace()
    walk = copy_walk(trace.context(), trace.prompt_tokens, trace.regions)
    assert all(e is None or e.source == "user" for e in walk.evidence)
    hits = walk.tokens == trace.target
    assert hits.mean() > 0.85
    runs = walk.runs(trace.context(), trace.prompt_tokens, 64)
    # Right up to the edit at 20; after it, three tokens make a match again.
    assert runs[0] == 20 and runs[19] == 1 and runs[20:24].tolist() == [0, 0, 0, 0]
    assert runs[24] == 36


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Engine:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1, probe=False) as eng:
        yield eng


def test_a_regenerated_reply_copies_its_previous_version(engine: Engine) -> None:
    """The previous reply left the cache when the prompt came again: it stays searchable, and
    a regenerated greedy reply (the same text) is copied from it, losslessly."""
    engine.reset()
    prompt = "In the morning the village was"
    first = engine.complete(prompt, max_tokens=48, ignore_eos=True, policy="lookup:8:64")
    again = engine.complete(prompt, max_tokens=48, ignore_eos=True, policy="lookup:8:64")
    assert again.tokens == first.tokens
    assert again.stats.rounds < first.stats.rounds and max(again.stats.draft_lengths) > 16
    engine.reset()  # forgets it: a benchmark's runs copy only from themselves
    third = engine.complete(prompt, max_tokens=48, ignore_eos=True, policy="lookup:8:64")
    assert third.stats.rounds == first.stats.rounds


def test_copies_longer_than_a_draft_stay_lossless(engine: Engine) -> None:
    prompt = "The quick brown fox"
    engine.reset()
    alone = engine.complete(prompt, max_tokens=200, ignore_eos=True, policy="none")
    runs = {}
    for policy in ("lookup:2:64", "auto"):
        engine.reset()
        runs[policy] = done = engine.complete(prompt, max_tokens=200, ignore_eos=True,
                                              policy=policy)
        assert done.tokens == alone.tokens
        assert done.stats.lookup_rounds > 0
    assert max(runs["lookup:2:64"].stats.draft_lengths) > 16
    sampled = SamplingParams(temperature=1.0, seed=4)
    engine.reset()
    done = engine.complete(prompt, max_tokens=120, ignore_eos=True, policy="lookup:2:64",
                           sampling=sampled)
    assert done.stats.generated == 120


def test_chat_prompts_say_where_each_message_starts(engine: Engine) -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "def add(a, b):\n    return a + b"},
                {"role": "assistant", "content": "It adds two numbers."},
                {"role": "user", "content": "Rename it to plus."}]
    template = ChatTemplate.for_model(engine.target_model)
    fitted = fit_messages(engine, template, messages, max_tokens=16)
    assert [role for _, role in fitted.regions] == ["system", "user", "assistant", "user"]
    for (start, _), m in zip(fitted.regions, messages, strict=True):
        piece = engine.target_model.detokenize(fitted.ids[start:start + 3])
        assert m["content"].startswith(piece.lstrip()[:4]) or piece.strip() in m["content"]


def test_auto_names_the_arms_whose_proposals_were_kept_with_their_share() -> None:
    """A code edit copies in a few rounds among many of the target alone: the status names
    the copies and their share of the reply, and `none` only when nothing proposed was kept."""
    strategy = live_auto()
    strategy.decide(None, 100, 100)
    none, copy, draft = (RoundPlan("none"), RoundPlan("lookup", Copy(tuple(range(9)))),
                         RoundPlan("draft", draft=4))
    for _ in range(12):
        strategy.learn(none, RoundResult((), 0, 7, False, 0.0, 0.03))
    strategy.learn(draft, RoundResult((1, 2, 3, 4), 0, 7, False, 0.02, 0.05, 4))
    assert strategy.describe().startswith("auto → none")
    strategy.learn(copy, RoundResult(tuple(range(9)), 7, 7, True, 0.0, 0.05))
    assert strategy.describe().startswith("auto → lookup 38%")  # 8 of the 21 tokens
    strategy.learn(draft, RoundResult((1, 2, 3, 4), 2, 7, False, 0.02, 0.05, 4))
    assert strategy.describe().startswith("auto → lookup 33% + draft 17%")  # 8 and 4 of 24
