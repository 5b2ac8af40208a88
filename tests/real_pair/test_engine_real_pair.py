"""The real Qwen2.5-Coder 1.5B/0.5B pair (Q4_K_M): speculative greedy output equals the
target's own greedy output for every policy.

llama.cpp is not bit-identical across batch shapes on quantized weights, so a divergence is
allowed only where the target itself sees a near-tie: at the first differing position the
target's logit gap between its top token and the token chosen must be under 0.5.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from svip_local import Engine
from svip_local.native import Context, Outputs

pytestmark = pytest.mark.real_pair

POLICIES = ["constant:3", "heuristic", "svip", "pmin:0.75", "adaedl"]
PROMPTS = [
    "def is_prime(n):\n",
    "Translate to French: The weather is nice today.\n",
    "Question: What is the capital of Australia?\nAnswer:",
]
NEAR_TIE = 0.5
MAX_TOKENS = 32


@pytest.fixture(scope="module")
def engine(real_pair: tuple[Path, Path]) -> Engine:
    target, draft = real_pair
    with Engine(target, draft, n_ctx=1024) as eng:
        yield eng


def logit_gap(engine: Engine, prefix: list[int], chosen: int) -> float:
    with Context(engine.target_model, n_ctx=1024) as ctx:
        ctx.decode(prefix, Outputs.LAST)
        row = ctx.logits()
        return float(row.max() - row[chosen])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_speculation_matches_target(engine: Engine, prompt: str) -> None:
    ids = engine.tokenize(prompt)
    alone = engine.complete(ids, max_tokens=MAX_TOKENS, policy="none")
    for policy in POLICIES:
        spec = engine.complete(ids, max_tokens=MAX_TOKENS, policy=policy)
        if spec.tokens == alone.tokens:
            continue
        i = next(i for i, (a, b) in enumerate(zip(spec.tokens, alone.tokens, strict=False))
                 if a != b)
        prefix = ids + list(alone.tokens[:i])
        gaps = [logit_gap(engine, prefix, t) for t in (spec.tokens[i], alone.tokens[i])]
        assert max(gaps) < NEAR_TIE, (policy, i, gaps)


def test_real_pair_drafts_are_mostly_accepted(engine: Engine) -> None:
    done = engine.complete(PROMPTS[0], max_tokens=MAX_TOKENS, policy="svip")
    assert done.stats.acceptance_rate > 0.5
    assert done.stats.drafted > 0
