"""Speculative rejection sampling must leave the target's distribution untouched.

The exact distribution of the first two generated tokens is computed from the target alone
(p(x) · p(y | x) over the truncated support); thousands of seeded speculative runs with a
noisy draft must match it by a chi-square test, and a classic mistake (drawing the rejection
fallback from p instead of norm(max(0, p - q))) must fail the same test.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

import svip_local.sampling as sampling_module
from svip_local import Engine, SamplingParams
from svip_local.native import Context, Outputs
from svip_local.policies import PromptLookup
from svip_local.sampling import distribution, verify_candidates
from svip_local.transcript import Transcript

PARAMS = {"temperature": 1.0, "top_k": 6}
RUNS = 3000
P_THRESHOLD = 1e-3


def exact_pair_distribution(engine: Engine, prompt: list[int]) -> dict[tuple[int, int], float]:
    """P(first two tokens) under target-alone sampling, from a fresh target context."""
    params = SamplingParams(**PARAMS)
    with Context(engine.target_model, n_ctx=256, n_threads=1) as ctx:
        ctx.decode(prompt, Outputs.LAST)
        first = distribution(ctx.logits()[: engine.n_vocab], params)
        pairs = {}
        for x in np.flatnonzero(first):
            ctx.truncate(len(prompt))
            ctx.decode([int(x)], Outputs.LAST)
            second = distribution(ctx.logits()[: engine.n_vocab], params)
            for y in np.flatnonzero(second):
                pairs[(int(x), int(y))] = float(first[x] * second[y])
    return pairs


def sampled_pairs(engine: Engine, prompt: list[int], policy: str = "constant:2"
                  ) -> Counter[tuple[int, int]]:
    counts: Counter[tuple[int, int]] = Counter()
    for seed in range(RUNS):
        done = engine.complete(prompt, max_tokens=2, policy=policy, ignore_eos=True,
                               sampling=SamplingParams(**PARAMS, seed=seed))
        counts[done.tokens[:2]] += 1
    return counts


def chi_square_p(counts: Counter[tuple[int, int]], exact: dict[tuple[int, int], float]) -> float:
    assert set(counts) <= set(exact), "sampled a pair outside the target's support"
    cells = sorted(exact, key=exact.__getitem__, reverse=True)
    observed = np.array([counts[c] for c in cells], dtype=float)
    expected = np.array([exact[c] for c in cells]) * RUNS
    # Pool the rare cells so every expected count is >= 5 (chi-square validity).
    rare = expected < 5
    observed = np.append(observed[~rare], observed[rare].sum())
    expected = np.append(expected[~rare], expected[rare].sum())
    return float(chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Engine:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=256, n_threads=1) as eng:
        yield eng


@pytest.fixture(scope="module")
def prompt(engine: Engine) -> list[int]:
    return engine.tokenize("Once upon a time")


def test_speculative_sampling_matches_target_distribution(engine: Engine,
                                                          prompt: list[int]) -> None:
    exact = exact_pair_distribution(engine, prompt)
    counts = sampled_pairs(engine, prompt)
    assert chi_square_p(counts, exact) > P_THRESHOLD


def test_copied_tokens_keep_the_target_distribution(engine: Engine) -> None:
    """A prompt-lookup round proposes a token with certainty (q = one-hot): accepting it with
    probability p(x) and else drawing from p without x must still sample exactly p."""
    prompt = engine.tokenize("Once upon a time, once upon a time")
    assert PromptLookup(1, 2).propose(Transcript(prompt, capacity=len(prompt)), 1), \
        "the first round must copy a token"
    counts = sampled_pairs(engine, prompt, policy="lookup:1:2")
    assert chi_square_p(counts, exact_pair_distribution(engine, prompt)) > P_THRESHOLD


def test_a_certain_proposal_is_rejected_into_p_without_it() -> None:
    rng = np.random.default_rng(7)
    p = np.array([0.5, 0.3, 0.15, 0.05])
    draws = [verify_candidates(p, [1], [None], rng)[1] for _ in range(40000)]
    got = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(got, p, atol=0.01)


def test_wrong_residual_is_detected(engine: Engine, prompt: list[int],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def resample_from_p(p, q, token):  # type: ignore[no-untyped-def]
        return p  # wrong: ignores that the accepted mass already covers min(p, q)

    monkeypatch.setattr(sampling_module, "residual", resample_from_p)
    exact = exact_pair_distribution(engine, prompt)
    counts = sampled_pairs(engine, prompt)
    assert chi_square_p(counts, exact) < P_THRESHOLD


def test_same_seed_same_sample(engine: Engine, prompt: list[int]) -> None:
    params = SamplingParams(**PARAMS, seed=1234)
    a = engine.complete(prompt, max_tokens=20, sampling=params, policy="svip", ignore_eos=True)
    b = engine.complete(prompt, max_tokens=20, sampling=params, policy="svip", ignore_eos=True)
    assert a.tokens == b.tokens
