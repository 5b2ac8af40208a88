"""Greedy speculative decoding on tiny F32 models must reproduce the target alone exactly,
whatever the policy, and both KV caches must track the accepted sequence round by round."""

from __future__ import annotations

from pathlib import Path

import pytest

from svip_local import Engine, Round, Token

POLICIES = ["constant:1", "constant:4", "heuristic", "svip", "svip:0.1", "pmin:0.3", "adaedl",
            "lookup:1:8", "svip+lookup:2:4", "auto"]
PROMPTS = ["Hello there, how are", "The quick brown fox", "def main():\n    "]


@pytest.fixture(scope="module")
def noisy_engine(tiny_target: Path, tiny_draft_noisy: Path) -> Engine:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1) as engine:
        yield engine


@pytest.fixture(scope="module")
def twin_engine(tiny_target: Path) -> Engine:
    """The target as its own draft: every greedy draft token must be accepted."""
    with Engine(tiny_target, tiny_target, n_ctx=512, n_threads=1) as engine:
        yield engine


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("policy", POLICIES)
def test_greedy_speculation_equals_target_alone(noisy_engine: Engine, prompt: str,
                                                policy: str) -> None:
    alone = noisy_engine.complete(prompt, max_tokens=60, policy="none", ignore_eos=True)
    spec = noisy_engine.complete(prompt, max_tokens=60, policy=policy, ignore_eos=True)
    assert spec.tokens == alone.tokens
    assert spec.text == alone.text
    assert alone.stats.drafted == 0 and alone.stats.rounds == 60


def test_noisy_draft_is_partly_accepted(noisy_engine: Engine) -> None:
    done = noisy_engine.complete(PROMPTS[0], max_tokens=120, policy="constant:4",
                                 ignore_eos=True)
    assert 0 < done.stats.accepted < done.stats.drafted
    origins = done.stats.from_draft
    assert any(origins) and not all(origins)
    assert sum(origins) == done.stats.accepted


@pytest.mark.parametrize("policy", ["constant:4", "svip", "heuristic"])
def test_identical_draft_is_always_accepted(twin_engine: Engine, policy: str) -> None:
    done = twin_engine.complete(PROMPTS[1], max_tokens=80, policy=policy, ignore_eos=True)
    assert done.stats.drafted > 0
    assert done.stats.accepted == done.stats.drafted
    alone = twin_engine.complete(PROMPTS[1], max_tokens=80, policy="none", ignore_eos=True)
    assert done.tokens == alone.tokens


@pytest.mark.parametrize("policy", ["constant:4", "svip", "pmin:0.3"])
def test_kv_caches_track_the_accepted_sequence(noisy_engine: Engine, policy: str) -> None:
    """After every round the target holds prompt + emitted - 1 tokens (the newest token is
    decoded at the start of the next round), and the draft holds the same, except after an
    all-accepted round, where it may not have decoded its own last proposal. (A round that
    drafts nothing, the last one of a budget, leaves the draft as it was: it catches up when
    it next drafts.) llama.cpp's own positions are what the Round event reports."""
    prompt = noisy_engine.tokenize(PROMPTS[2])
    tokens: list[int] = []
    emitted = 0
    rounds = 0
    for event in noisy_engine.generate(prompt, max_tokens=80, policy=policy, ignore_eos=True):
        if isinstance(event, Token):
            emitted += 1
            tokens.append(event.id)
        elif isinstance(event, Round):
            rounds += 1
            accepted_len = len(prompt) + emitted
            assert event.target_kv == accepted_len - 1
            accepted_ids = prompt + tokens
            assert noisy_engine.target_ctx.tokens == accepted_ids[:-1]
            draft_ids = noisy_engine.draft_ctx.tokens
            assert event.draft_kv == len(draft_ids)
            assert draft_ids == accepted_ids[: len(draft_ids)]
            if event.drafted:  # a round that drafted leaves the draft in step
                in_step = event.draft_kv == accepted_len - 1
                one_short = event.accepted == event.drafted and event.draft_kv == accepted_len - 2
                assert in_step or one_short
    assert rounds > 0


def test_generations_reuse_the_cached_prefix(noisy_engine: Engine) -> None:
    first = noisy_engine.complete(PROMPTS[0], max_tokens=10, policy="svip")
    prompt = noisy_engine.tokenize(PROMPTS[0]) + list(first.tokens)
    before = noisy_engine.target_ctx.n_decoded
    second = noisy_engine.complete(prompt, max_tokens=5, policy="svip")
    # Only the newest token of the previous reply is decoded again before generating.
    assert second.stats.prefill_tokens <= 1
    assert noisy_engine.target_ctx.n_decoded - before <= second.stats.generated + 1 + 16 * 5


def test_cancel_mid_generation_keeps_engine_usable(noisy_engine: Engine) -> None:
    stream = noisy_engine.generate(PROMPTS[0], max_tokens=200, policy="constant:4",
                                   ignore_eos=True)
    for event in stream:
        if isinstance(event, Round) and event.index == 3:
            noisy_engine.cancel()
    done = event
    assert done.finish_reason == "cancelled"
    assert noisy_engine.kv_lengths()[0] == len(noisy_engine.target_ctx.tokens)
    # A consumer that simply stops iterating leaves the caches consistent too.
    partial = noisy_engine.generate(PROMPTS[1], max_tokens=200, policy="svip", ignore_eos=True)
    next(partial)
    partial.close()
    target_kv, draft_kv = noisy_engine.kv_lengths()
    assert target_kv == len(noisy_engine.target_ctx.tokens)
    assert draft_kv == len(noisy_engine.draft_ctx.tokens)
    again = noisy_engine.complete(PROMPTS[1], max_tokens=20, policy="svip", ignore_eos=True)
    alone = noisy_engine.complete(PROMPTS[1], max_tokens=20, policy="none", ignore_eos=True)
    assert again.tokens == alone.tokens


def test_stop_strings_cut_the_text(noisy_engine: Engine) -> None:
    full = noisy_engine.complete(PROMPTS[0], max_tokens=60, policy="none", ignore_eos=True)
    stop = full.text[20:23]
    assert stop
    done = noisy_engine.complete(PROMPTS[0], max_tokens=60, policy="svip", stop=[stop],
                                 ignore_eos=True)
    assert done.finish_reason == "stop"
    assert done.text == full.text[: full.text.find(stop)]


def test_target_alone_engine_without_draft(tiny_target: Path) -> None:
    with Engine(tiny_target, n_ctx=256, n_threads=1) as engine:
        done = engine.complete(PROMPTS[0], max_tokens=12, ignore_eos=True)
        assert len(done.tokens) == 12
        assert done.stats.policy.startswith("auto → ")  # the target alone, or its copies
        assert engine.kv_lengths()[1] is None
