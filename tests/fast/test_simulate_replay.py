"""Traces recorded on tiny generated models replay live runs exactly, round by round."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from svip_local import Engine, SamplingParams
from svip_local.bench.simulate import oracle, realise_all, simulate
from svip_local.bench.traces import PromptTrace, TraceSet, record_trace
from svip_local.native import Outputs
from svip_local.policies import NoDraft, parse_policy
from svip_local.sampling import distribution
from tests.support.sim import make_costs

PROMPTS = ["The quick brown fox", "In the morning the village was"]
COSTS = make_costs(lambda b: 0.1 + 0.01 * b)


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Engine:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1, policy="none") as eng:
        yield eng


def trace_of(engine: Engine, prompt: str, max_tokens: int = 80, ignore_eos: bool = True,
             sampling: SamplingParams | None = None) -> PromptTrace:
    ids = engine.tokenize(prompt)
    done = engine.complete(ids, max_tokens=max_tokens, policy=NoDraft(), ignore_eos=ignore_eos,
                           sampling=sampling)
    return record_trace(engine, ids, done, prompt_id=prompt, category="qa",
                        max_tokens=max_tokens, sampling=sampling)


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("spec", ["constant:1", "constant:3", "constant:6", "heuristic",
                                  "svip:0.3", "svip:0.6", "pmin:0.3", "pmin:0.6", "adaedl",
                                  "lookup:1:8", "svip:0.3+lookup:2:4",
                                  "heuristic+lookup:3:16"])
def test_replay_matches_live_round_by_round(engine: Engine, prompt: str, spec: str) -> None:
    """Accepted lengths replay exactly. Draft lengths do wherever the live round had no
    mismatch; after one, the live draft went on along its own (wrong) tokens, which the
    trace does not hold, and only "more drafted than accepted" must agree. Copied rounds
    replay exactly: a copy depends only on the true prefix."""
    trace = trace_of(engine, prompt)
    assert 0.2 < trace.match.mean() < 0.9  # the noisy draft agrees only partly
    engine.reset()  # earlier generations' text would be there to copy from
    live = engine.complete(prompt, max_tokens=80, policy=spec, ignore_eos=True).stats
    sim = simulate(trace, parse_policy(spec), COSTS)
    if "lookup" in spec:  # the tiny target repeats itself, so there is something to copy
        assert live.lookup_rounds > 0
    assert sim.accepted_lengths == live.accepted_lengths
    for d_sim, d_live, acc in zip(sim.draft_lengths, live.draft_lengths,
                                  live.accepted_lengths, strict=True):
        assert d_sim == d_live if d_live == acc else d_sim > acc
    assert sim.generated == live.generated == 80


def test_trace_records_the_target_path_and_draft_statistics(engine: Engine) -> None:
    trace = trace_of(engine, PROMPTS[0], max_tokens=40)
    assert engine.draft_ctx.tokens == []  # the draft pass leaves its cache empty
    alone = engine.complete(PROMPTS[0], max_tokens=40, policy="none", ignore_eos=True)
    assert trace.target.tolist() == list(alone.tokens)
    assert trace.budget == 40 and trace.generated == 40
    assert np.all(trace.entropy >= 0) and np.all((trace.top_prob > 0) & (trace.top_prob <= 1))


def test_a_twin_draft_matches_everywhere(tiny_target: Path) -> None:
    with Engine(tiny_target, tiny_target, n_ctx=512, n_threads=1, policy="none") as twin:
        trace = trace_of(twin, PROMPTS[1], max_tokens=30)
    assert trace.match.all()
    flat = make_costs(lambda b: 0.1, draft=(0.0, 0.0, 0.0, 0.0), draft_prefill=(0.0, 0.0, 0.0))
    res = oracle(trace, flat, max_draft=16)  # 30 tokens: two rounds of at most 17
    assert res.rounds == 2 and res.drafted == 28 and res.accepted == 28


def test_trace_set_round_trip(engine: Engine, tmp_path: Path) -> None:
    sampled = SamplingParams(temperature=1.0, seed=5)
    traces = [trace_of(engine, p, max_tokens=20, sampling=s) for p in PROMPTS
              for s in (None, sampled)]
    path = TraceSet({"pair": "tiny", "max_tokens": 20}, traces).save(tmp_path / "t.npz")
    loaded = TraceSet.load(path)
    assert loaded.meta == {"pair": "tiny", "max_tokens": 20}
    for a, b in zip(traces, loaded.traces, strict=True):
        assert (a.prompt_id, a.budget, a.finish, a.prompt_tokens) == \
            (b.prompt_id, b.budget, b.finish, b.prompt_tokens)
        for name in ("target", "draft", "entropy", "top_prob", "draft_eog", "prompt_ids",
                     "accept_prob"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.temperature == b.temperature
        assert b.context().tolist() == engine.tokenize(a.prompt_id) + a.target.tolist()


def test_a_trace_without_its_prompt_replays_no_copies(engine: Engine) -> None:
    trace = trace_of(engine, PROMPTS[0])
    blind = replace(trace, prompt_ids=np.empty(0, np.int32))
    assert blind.context() is None
    with_copies = simulate(trace, parse_policy("lookup:1:8"), COSTS)
    assert with_copies.drafted > 0
    assert simulate(blind, parse_policy("lookup:1:8"), COSTS).drafted == 0


def test_eos_finish_keeps_the_end_token_and_replays(engine: Engine) -> None:
    """A run that stops at end of text keeps the end token as the trace's last position, and
    the replay stops there like the live run ("the lazy" ends after a few dozen tokens)."""
    trace = trace_of(engine, "the lazy", max_tokens=300, ignore_eos=False)
    assert trace.finish == "eos"
    assert len(trace.target) == trace.generated + 1
    assert engine.target_model.is_eog(int(trace.target[-1]))
    for spec in ("constant:4", "svip:0.3"):
        engine.reset()
        live = engine.complete("the lazy", max_tokens=300, policy=spec).stats
        sim = simulate(trace, parse_policy(spec), COSTS)
        assert sim.accepted_lengths == live.accepted_lengths
        assert sim.generated == live.generated == trace.generated


def test_a_sampled_trace_holds_the_chance_each_draft_token_is_accepted(engine: Engine) -> None:
    """Along a sampled target-alone run, position i holds sum_x min(p_i(x), q_i(x)) at the
    run's temperature: checked against single decodes of the same prefix."""
    sampling = SamplingParams(temperature=1.0, seed=7)
    ids = engine.tokenize(PROMPTS[0])
    done = engine.complete(ids, max_tokens=30, policy=NoDraft(), ignore_eos=True,
                           sampling=sampling)
    trace = record_trace(engine, ids, done, prompt_id="p", category="qa", max_tokens=30,
                         sampling=sampling)
    assert engine.target_ctx.tokens == [] and engine.draft_ctx.tokens == []
    assert trace.temperature == 1.0 and trace.target.tolist() == list(done.tokens)
    assert len(trace.accept_prob) == 30 and 0.1 < trace.accept_prob.mean() < 0.95
    for i in (0, 13, 29):
        rows = []
        for ctx in (engine.target_ctx, engine.draft_ctx):
            ctx.decode([*ids, *done.tokens[:i]], Outputs.LAST)
            rows.append(distribution(ctx.logits()[: engine.n_vocab], sampling))
            ctx.clear()
        assert trace.accept_prob[i] == pytest.approx(np.minimum(*rows).sum(), abs=1e-3)
    with pytest.raises(ValueError, match="realise"):
        trace.match  # noqa: B018 (a sampled trace has no matches of its own)


def test_sampled_replay_predicts_the_live_acceptance(engine: Engine) -> None:
    """Replaying realisations of sampled traces gives about the accepted tokens per round of
    live sampled runs, within 10% (the replay treats positions as independent, an
    approximation; the benchmark measures the error in tokens/s)."""
    live_acc, live_rounds, traces = 0, 0, []
    for seed in range(6):
        sampling = SamplingParams(temperature=1.0, seed=seed)
        for prompt in PROMPTS:
            stats = engine.complete(prompt, max_tokens=60, policy="constant:3",
                                    ignore_eos=True, sampling=sampling).stats
            live_acc, live_rounds = live_acc + stats.accepted, live_rounds + stats.rounds
            traces.append(trace_of(engine, prompt, 60, sampling=sampling))
    sims = [simulate(t, parse_policy("constant:3"), COSTS) for t in realise_all(traces)]
    replayed = sum(r.accepted for r in sims) / sum(r.rounds for r in sims)
    assert replayed == pytest.approx(live_acc / live_rounds, rel=0.1)
