"""Each policy's stopping rule, against its written definition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from svip_local.policies import (
    AdaEdl,
    Constant,
    Heuristic,
    NoDraft,
    PMin,
    StepStats,
    Svip,
    Verdict,
    entropy_and_top_prob,
    parse_policy,
)
from svip_local.stops import StopMatcher


def step(n: int = 1, entropy: float = math.nan, top_prob: float = math.nan) -> StepStats:
    return StepStats(n, entropy, top_prob)


def test_entropy_and_top_prob_match_the_definition() -> None:
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(151_936) * 4).astype(np.float32)
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    h, top = entropy_and_top_prob(logits, np.empty_like(logits))
    assert h == pytest.approx(-(p * np.log(p)).sum(), rel=1e-5)
    assert top == pytest.approx(p.max(), rel=1e-6)
    peaked = np.full(1000, -50.0, dtype=np.float32)
    peaked[3] = 0
    h, top = entropy_and_top_prob(peaked, np.empty_like(peaked))
    assert h == pytest.approx(0, abs=1e-6) and top == pytest.approx(1.0)


def test_svip_keeps_the_uncertain_token_then_stops() -> None:
    policy = Svip(0.3)  # sqrt(0.15 H) > 0.3  <=>  H > 0.6 nats
    assert policy.judge(step(entropy=0.59)) is Verdict.CONTINUE
    assert policy.judge(step(entropy=0.61)) is Verdict.STOP
    assert parse_policy("svip:0.5").judge(step(entropy=1.6)) is Verdict.CONTINUE  # 0.25/0.15
    assert parse_policy("svip:0.5").judge(step(entropy=1.7)) is Verdict.STOP


def test_pmin_drops_the_unsure_token() -> None:
    policy = PMin(0.75)
    assert policy.judge(step(top_prob=0.8)) is Verdict.CONTINUE
    assert policy.judge(step(top_prob=0.7)) is Verdict.DROP


def test_heuristic_schedule_follows_hugging_face() -> None:
    policy = Heuristic()
    assert policy.round_limit() == 5
    policy.observe(drafted=5, accepted=5)
    assert policy.round_limit() == 7
    policy.observe(drafted=7, accepted=2)
    assert policy.round_limit() == 6
    for _ in range(10):
        policy.observe(drafted=1, accepted=0)
    assert policy.round_limit() == 1
    for _ in range(30):
        policy.observe(drafted=40, accepted=40)
    assert policy.schedule == 40 and policy.round_limit() == 16  # max draft caps the round


def test_adaedl_threshold_adapts_to_acceptance() -> None:
    policy = AdaEdl()
    lam = policy.lam
    assert policy.judge(step(entropy=0.1)) is Verdict.CONTINUE  # bound 0.86 > 0.6
    assert policy.judge(step(entropy=1.0)) is Verdict.STOP  # bound 0.55 < 0.6
    for _ in range(5):
        policy.observe(drafted=4, accepted=0)
    assert policy.lam > lam  # many rejections: stop earlier
    stricter = policy.lam
    for _ in range(50):
        policy.observe(drafted=policy.round_limit(), accepted=policy.round_limit())
    assert policy.lam < stricter


def test_constant_and_none() -> None:
    assert Constant(3).round_limit() == 3
    assert Constant(3).judge(step()) is Verdict.CONTINUE
    assert NoDraft().round_limit() == 0
    assert parse_policy("none").name == "none"
    assert parse_policy("constant:7").round_limit() == 7


def test_stop_matcher_holds_back_only_possible_stops() -> None:
    m = StopMatcher(["</s>", "END"])
    assert m.push("hello <") == "hello "
    assert m.push("/") == ""
    assert m.push("x") == "</x"
    assert m.push(" E") == " "
    assert m.push("ND and more") == ""
    assert m.hit == "END"
    assert StopMatcher([]).push("abc") == "abc"
    tail = StopMatcher(["###"])
    assert tail.push("a#") == "a"
    assert tail.flush() == "#"
