"""Token trees (CaPE, multi-candidate lookup) on tiny F32 models: verified in one decode, lossless
greedily and when sampling, and both KV caches holding exactly the accepted path afterwards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import svip_local.sampling as sampling_module
from svip_local import Engine, Round, SamplingParams
from svip_local.bench.simulate import simulate
from svip_local.bench.traces import record_trace
from svip_local.errors import InvalidRequestError
from svip_local.native import MAX_BRANCHES
from svip_local.policies import Constant, CostAwareCape, LookupTree, Strategy, label, parse_policy
from svip_local.round import add_copy
from svip_local.transcript import Transcript
from svip_local.tree import TokenTree
from tests.fast.test_engine_sampling import chi_square_p, exact_pair_distribution, sampled_pairs
from tests.support.sim import make_costs

PROMPT = "The quick brown fox"
REPEATING = "Once upon a time, once upon a time, once upon a time"
BRANCHING = "a red apple, a red pear, a red plum, a red"  # "red" went on three ways
TREE_SPECS = ["constant:3+cape:4", "svip:0.3+cape:16", "pmin:0.5+cape:8", "constant:6+cape:32",
              "lookup-tree:1:8", "lookup-tree:2:32", "svip:0.3+cape:8+lookup-tree:1:16"]


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Engine:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1, policy="none") as eng:
        yield eng


def small_tree() -> TokenTree:
    """root -> a(0) -> b(1) -> c(2); a -> d(3); root -> e(4)."""
    tree = TokenTree.chain([10, 11, 12])
    tree.add(13, 0)
    tree.add(14, -1)
    return tree


def test_a_tree_lays_out_one_sequence_per_branch() -> None:
    tree = small_tree()
    depths, seqs, branches = tree.layout()
    assert depths == [0, 1, 2, 3, 2, 1]
    assert branches == 3  # leaves c, d, e
    assert seqs == [[0, 1, 2], [0, 1], [0], [0], [1], [2]]
    assert tree.children(-1) == [0, 4] and tree.children(0) == [1, 3]
    assert tree.child_with(0, 13) == 3 and tree.child_with(0, 99) == -1
    assert tree.chain_below(3) == [0, 3] and tree.chain_below(-1) == [0, 1, 2]
    assert TokenTree.chain([1, 2]).layout() == ([0, 1, 2], [[0], [0], [0]], 1)


def test_pruning_keeps_a_tree() -> None:
    tree = small_tree()
    tree.prune(max_nodes=10, max_depth=2)
    assert tree.tokens == [10, 11, 13, 14] and tree.parents == [-1, 0, 0, -1]
    tree.prune(max_nodes=2, max_depth=5)
    assert tree.tokens == [10, 11] and tree.parents == [-1, 0]


def proposed_tree(lookup: LookupTree, context: list[int], cap: int) -> TokenTree:
    tree = TokenTree()
    copy = lookup.propose(Transcript(context, capacity=len(context)), cap)
    if copy is not None:
        add_copy(tree, copy)
    return tree


def test_a_lookup_tree_merges_every_occurrence_most_supported_first() -> None:
    ctx = [1, 2, 7, 8, 1, 2, 7, 9, 1, 2, 5, 6, 1, 2]
    tree = proposed_tree(LookupTree(2, 16), ctx, 3)
    # continuations of "1 2": 7 8 1 | 7 9 1 | 5 6 1 (newest first in ties)
    assert tree.tokens[0] == 7 and tree.parents[0] == -1  # two occurrences go through 7
    assert sorted(tree.tokens[i] for i in tree.children(-1)) == [5, 7]
    assert sorted(tree.tokens[i] for i in tree.children(0)) == [8, 9]
    assert len(tree) == 8
    budget = proposed_tree(LookupTree(2, 3), ctx, 3)
    assert len(budget) == 3 and budget.tokens[0] == 7
    assert LookupTree(3, 8).propose(Transcript([1, 2, 3, 4], capacity=4), 4) is None


@pytest.mark.parametrize("spec", TREE_SPECS)
def test_greedy_trees_are_the_target_alone(engine: Engine, spec: str) -> None:
    trees = 0
    for prompt in (PROMPT, REPEATING, BRANCHING):
        alone = engine.complete(prompt, max_tokens=48, policy="none", ignore_eos=True)
        done = engine.complete(prompt, max_tokens=48, policy=spec, ignore_eos=True)
        assert done.tokens == alone.tokens, (spec, prompt)
        trees += done.stats.nodes > done.stats.drafted
    assert trees  # it verified trees, not just chains


@pytest.mark.parametrize("spec", ["svip:0.3+cape:16", "lookup-tree:1:32"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_after_every_round_both_caches_hold_exactly_the_sequence(
        engine: Engine, spec: str, temperature: float) -> None:
    ids = engine.tokenize(BRANCHING)
    seq = list(ids)
    sampling = SamplingParams(temperature=temperature, seed=3)
    trees = 0
    for event in engine.generate(ids, max_tokens=60, policy=spec, sampling=sampling,
                                 ignore_eos=True):
        if hasattr(event, "id"):
            seq.append(event.id)
        if isinstance(event, Round):
            trees += event.nodes > event.drafted
            target = engine.target_ctx
            assert target.tokens == seq[:-1]
            assert target.pos_max() == len(seq) - 2
            assert event.target_kv == len(seq) - 1
            for b in range(1, MAX_BRANCHES):
                assert target.seq_cells(b) == (-1, -1), f"cells left in sequence {b}"
            draft = engine.draft_ctx
            assert draft is not None
            assert draft.tokens == seq[: len(draft.tokens)]
            assert draft.pos_max() == len(draft.tokens) - 1
    assert trees > 0


def test_a_tree_bigger_than_the_free_context_is_pruned(tiny_target: Path,
                                                       tiny_draft_noisy: Path) -> None:
    """To the last cell of the context: the last rounds have less room than the tree."""
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=256, n_threads=1) as eng:
        ids = eng.tokenize(BRANCHING)
        alone = eng.complete(ids, max_tokens=300, policy="none", ignore_eos=True)
        assert alone.finish_reason == "context"
        for spec in ("lookup-tree:1:32", "constant:8+cape:32"):
            done = eng.complete(ids, max_tokens=300, policy=spec, ignore_eos=True)
            assert done.finish_reason == "context"
            assert done.tokens == alone.tokens
            assert eng.target_ctx.pos_max() < eng.n_ctx


@pytest.mark.parametrize("spec, prompt", [("constant:2+cape:8", "Once upon a time"),
                                          ("lookup-tree:1:8", BRANCHING)])
def test_sampled_trees_keep_the_target_distribution(engine: Engine, spec: str,
                                                    prompt: str) -> None:
    ids = engine.tokenize(prompt)
    assert chi_square_p(sampled_pairs(engine, ids, spec),
                        exact_pair_distribution(engine, ids)) > 1e-3


def test_a_residual_that_forgets_the_rejected_candidate_is_detected(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trying the next candidate against p itself (not what the rejected ones left) favours
    the tree's tokens: the same test must fail."""
    monkeypatch.setattr(sampling_module, "residual", lambda p, q, token: p)
    ids = engine.tokenize("Once upon a time")
    assert chi_square_p(sampled_pairs(engine, ids, "constant:2+cape:8"),
                        exact_pair_distribution(engine, ids)) < 1e-3


def test_verify_candidates_samples_p_for_any_candidates() -> None:
    rng = np.random.default_rng(5)
    p = np.array([0.4, 0.3, 0.2, 0.1])
    q = np.array([0.1, 0.1, 0.1, 0.7])
    got = np.zeros(4)
    for _ in range(40000):
        x = int(rng.choice(4, p=q))  # a drafted child, then two certain ones
        tokens = [x, *(t for t in (2, 1) if t != x)]
        i, tok = sampling_module.verify_candidates(p, tokens, [q] + [None] * (len(tokens) - 1),
                                                   rng)
        assert i < 0 or tok == tokens[i]
        got[tok] += 1
    np.testing.assert_allclose(got / got.sum(), p, atol=0.01)


def test_specs_name_trees() -> None:
    plan = parse_policy("svip:0.3+cape:16+lookup-tree:4:8")
    assert plan.name == "svip:0.3+cape:16+lookup-tree:4:8"
    assert label("svip:0.3+cape:16") == "SVIP h=0.3 + CaPE 16"
    with pytest.raises(InvalidRequestError, match="name the length policy"):
        parse_policy("cape:16")
    with pytest.raises(InvalidRequestError, match="at most one"):
        parse_policy("svip+cape+cape")
    with pytest.raises(InvalidRequestError, match=r"cape's nodes must be in \[1, 64\], got 0"):
        parse_policy("svip+cape:0")


FREE_ROWS = make_costs(lambda b: 0.1 + 1e-6 * b)  # a GPU-like batch: rows almost free
DEAR_ROWS = make_costs(lambda b: 0.1 * b)  # every row costs a decode


def test_cost_aware_cape_is_wide_where_rows_are_free_and_absent_where_they_are_dear() -> None:
    ids = np.array([5, 6, 7, 8, 9, 10, 11, 12])
    probs = np.array([0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])
    options = [(ids, probs, 8), (ids + 20, probs, 8)]
    wide, none = TokenTree.chain([5, 25]), TokenTree.chain([5, 25])
    CostAwareCape.from_costs(FREE_ROWS, rate=10.0).expand(wide, options)
    CostAwareCape.from_costs(DEAR_ROWS, rate=10.0).expand(none, options)
    assert len(none) == 2  # 0.2 expected tokens never pay for a decode's worth of row
    assert len(wide) == 2 + 7 + 7  # every alternative at both depths
    assert wide.tokens[2] == 6 and wide.parents[2] == -1  # the most likely alternative first
    assert {wide.tokens[c] for c in wide.children(0)} == {25, *range(26, 33)}


@pytest.mark.parametrize("costs", [FREE_ROWS, DEAR_ROWS])
def test_cost_aware_cape_is_lossless_and_replays_round_for_round(engine: Engine,
                                                                 costs: object) -> None:
    ids, budget = engine.tokenize(PROMPT), 48
    alone = engine.complete(ids, max_tokens=budget, policy="none", ignore_eos=True)
    trace = record_trace(engine, ids, alone, prompt_id="p", category="qa", max_tokens=budget)
    assert isinstance(costs, type(FREE_ROWS))

    def strategy() -> Strategy:
        return Strategy(Constant(3), expander=CostAwareCape.from_costs(costs, rate=10.0))

    done = engine.complete(ids, max_tokens=budget, policy=strategy(), ignore_eos=True)
    assert done.tokens == alone.tokens
    assert (done.stats.nodes > done.stats.drafted) == (costs is FREE_ROWS)
    sim = simulate(trace, strategy(), costs)
    assert sim.accepted_lengths == done.stats.accepted_lengths
    assert sim.node_counts[:3] == done.stats.node_counts[:3]
