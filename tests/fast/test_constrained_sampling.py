"""Sampling under a constraint must draw from the target's masked distribution: the mask
first, then `sampling.distribution` unchanged, whatever the draft proposed (masked too).

The exact distribution of the first two tokens is computed from the target alone with
llguidance's own mask; thousands of seeded speculative runs must match it by a chi-square
test, and a wrong rule (the draft masked but the target's rows not) must fail it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from llguidance import LLMatcher
from llguidance.numpy import (
    allocate_token_bitmask,
    apply_token_bitmask_inplace,
    fill_next_token_bitmask,
)
from scipy.stats import chisquare

from svip_local import Constraint, Engine, SamplingParams
from svip_local.native import Context, Outputs, grammar_tokenizer
from svip_local.round import Speculator
from svip_local.sampling import distribution

PARAMS = {"temperature": 1.0, "top_k": 6}
RUNS = 2500
P_THRESHOLD = 1e-3
CONSTRAINT = Constraint.lark("start: /[a-e]{5,8}/")  # at least two tokens in this vocabulary


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Iterator[Engine]:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=256, n_threads=1) as eng:
        yield eng


def masked_distribution(logits: np.ndarray, matcher: LLMatcher, n_vocab: int) -> np.ndarray:
    mask = allocate_token_bitmask(1, n_vocab)
    fill_next_token_bitmask(matcher, mask)
    row = np.array(logits[:n_vocab], dtype=np.float32)[None, :]
    apply_token_bitmask_inplace(row, mask)
    return distribution(row[0], SamplingParams(**PARAMS))


def exact_pairs(engine: Engine, prompt: list[int]) -> dict[tuple[int, ...], float]:
    matcher = LLMatcher(grammar_tokenizer(engine.target_model), CONSTRAINT.grammar,
                        log_level=0)
    pairs = {}
    with Context(engine.target_model, n_ctx=256, n_threads=1) as ctx:
        ctx.decode(prompt, Outputs.LAST)
        first = masked_distribution(ctx.logits(), matcher, engine.n_vocab)
        for x in np.flatnonzero(first):
            assert matcher.consume_token(int(x))
            ctx.truncate(len(prompt))
            ctx.decode([int(x)], Outputs.LAST)
            second = masked_distribution(ctx.logits(), matcher, engine.n_vocab)
            matcher.rollback(1)
            for y in np.flatnonzero(second):
                pairs[(int(x), int(y))] = float(first[x] * second[y])
    return pairs


def sampled_pairs(engine: Engine, prompt: list[int]) -> Counter[tuple[int, ...]]:
    counts: Counter[tuple[int, ...]] = Counter()
    for seed in range(RUNS):
        done = engine.complete(prompt, max_tokens=2, policy="constant:2", constraint=CONSTRAINT,
                               sampling=SamplingParams(**PARAMS, seed=seed))
        counts[done.tokens[:2]] += 1
    return counts


def chi_square_p(counts: Counter[tuple[int, ...]], exact: dict[tuple[int, ...], float]
                 ) -> float:
    """The test's p-value; 0 when a pair outside the masked support was sampled."""
    if not set(counts) <= set(exact):
        return 0.0
    cells = sorted(exact, key=exact.__getitem__, reverse=True)
    observed = np.array([counts[c] for c in cells], dtype=float)
    expected = np.array([exact[c] for c in cells]) * RUNS
    rare = expected < 5  # pooled, so every expected count is >= 5
    observed = np.append(observed[~rare], observed[rare].sum())
    expected = np.append(expected[~rare], expected[rare].sum())
    return float(chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)


def test_sampled_constrained_output_has_the_masked_distribution(engine: Engine) -> None:
    prompt = engine.tokenize("Once upon a time")
    exact = exact_pairs(engine, prompt)
    assert len({x for x, _ in exact}) > 2  # the grammar leaves the target a real choice
    assert chi_square_p(sampled_pairs(engine, prompt), exact) > P_THRESHOLD


def test_an_unmasked_target_is_detected(engine: Engine, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    """The wrong rule: drafts masked, the target's verification rows not."""
    verify = Speculator.verify

    def unmasked(self, seq, sampling, rng, grammar=None):  # type: ignore[no-untyped-def]
        return verify(self, seq, sampling, rng, None)

    monkeypatch.setattr(Speculator, "verify", unmasked)
    prompt = engine.tokenize("Once upon a time")
    assert chi_square_p(sampled_pairs(engine, prompt), exact_pairs(engine, prompt)) \
        < P_THRESHOLD
