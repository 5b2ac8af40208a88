"""Each policy's stopping rule, against its written definition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from svip_local.errors import InvalidRequestError
from svip_local.policies import (
    AdaEdl,
    Constant,
    Heuristic,
    NoDraft,
    PerTemperature,
    PMin,
    PromptLookup,
    StepStats,
    Strategy,
    Svip,
    Verdict,
    entropy_and_top_prob,
    entropy_scratch,
    parse_policy,
)
from svip_local.policies.table import split_spec
from svip_local.sampling import SamplingParams
from svip_local.stops import StopMatcher
from svip_local.transcript import Transcript


def step(n: int = 1, entropy: float = math.nan, top_prob: float = math.nan) -> StepStats:
    return StepStats(n, entropy, top_prob)


def test_entropy_and_top_prob_match_the_definition() -> None:
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(151_936) * 4).astype(np.float32)
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    h, top = entropy_and_top_prob(logits, entropy_scratch(len(logits)))
    assert h == pytest.approx(-(p * np.log(p)).sum(), rel=1e-5)
    assert top == pytest.approx(p.max(), rel=1e-6)
    peaked = np.full(1000, -50.0, dtype=np.float32)
    peaked[3] = 0
    h, top = entropy_and_top_prob(peaked, entropy_scratch(len(peaked)))
    assert h == pytest.approx(0, abs=1e-6) and top == pytest.approx(1.0)


def test_svip_keeps_the_uncertain_token_then_stops() -> None:
    policy = Svip(0.3)  # sqrt(0.15 H) > 0.3  <=>  H > 0.6 nats
    assert policy.judge(step(entropy=0.59)) is Verdict.CONTINUE
    assert policy.judge(step(entropy=0.61)) is Verdict.STOP
    assert parse_policy("svip:0.5").policy.judge(step(entropy=1.6)) is Verdict.CONTINUE  # 0.25/0.15
    assert parse_policy("svip:0.5").policy.judge(step(entropy=1.7)) is Verdict.STOP


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
    assert parse_policy("constant:7").policy.round_limit() == 7


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


def copied(lookup: PromptLookup, seq: list[int], cap: int) -> list[int]:
    copy = lookup.propose(Transcript(seq, capacity=len(seq)), cap)
    return [] if copy is None else [int(t) for t in copy.tokens]


def test_lookup_copies_what_followed_the_latest_occurrence() -> None:
    seq = [5, 1, 2, 7, 8, 9, 1, 2, 3, 4, 1, 2]
    assert copied(PromptLookup(2, 3), seq, 16) == [3, 4, 1]  # the later "1 2" wins
    assert copied(PromptLookup(2, 8), seq, 2) == [3, 4]  # the round's room caps it
    assert copied(PromptLookup(3, 8), seq, 16) == []  # "4 1 2" never occurred before
    assert copied(PromptLookup(2, 8), [1, 2], 16) == []  # nothing before the key
    assert copied(PromptLookup(1, 4), [6, 6, 6], 16) == [6]  # overlapping repeats
    assert copied(PromptLookup(1, 4), seq, 0) == []


def test_lookup_specs_parse_and_compose() -> None:
    assert split_spec("svip:0.3").proposer is None
    parsed = split_spec("svip:0.3+lookup:4:8")
    assert parsed.policy[0].name == "svip" and parsed.proposer is not None
    assert parsed.proposer[1] == (4, 8)
    assert split_spec("lookup").policy[0].name == "none"
    plan = parse_policy("svip:0.3+lookup:3")
    assert isinstance(plan, Strategy) and plan.name == "svip:0.3+lookup:3:8"
    assert plan.proposer == PromptLookup(3, 8)
    assert plan.policy.wants_entropy and plan.policy.round_limit() == 16
    alone = parse_policy("lookup:2:4")
    assert alone.name == "lookup:2:4" and not alone.needs_draft and alone.speculates
    for bad in ("svip+lookup:x", "lookup:0", "svip+constant:2", "lookup+lookup", "svip+",
                "svip:0.3:1", "bogus:2"):
        with pytest.raises(InvalidRequestError):
            parse_policy(bad)


def test_per_temperature_runs_the_strategy_of_the_nearest_temperature() -> None:
    greedy, hot = Strategy(Heuristic()), Strategy(Svip(0.3))
    plan = PerTemperature([(1.0, hot), (0.0, greedy)])
    assert plan.for_sampling(SamplingParams(temperature=0.2)) is greedy
    assert plan.for_sampling(SamplingParams(temperature=0.7)) is hot
    assert plan.name == "T0: heuristic:5 | T1: svip:0.3"
    copying = plan.with_proposer(PromptLookup(2, 4))
    assert copying.for_sampling(SamplingParams()).name == "heuristic:5+lookup:2:4"
    # the same policy objects: what they learnt carries over
    assert copying.for_sampling(SamplingParams()).policy is greedy.policy


def test_every_front_end_lists_what_the_table_registers() -> None:
    """`--policy` help, the TUI's choices and calibration's candidates all come from the one
    policy table, and the README's table names nothing the table does not register."""
    from pathlib import Path

    from svip_local.bench.calibrate_search import CANDIDATES, EXPANDERS, PROPOSERS
    from svip_local.cli import build_parser
    from svip_local.policies import policy_entries
    from tui.config import POLICY_NAMES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    generate = next(a for a in build_parser()._subparsers._group_actions[0].choices.items()
                    if a[0] == "generate")[1].format_help()
    policies = policy_entries("policy")
    for e in policy_entries():
        assert e.usage in "".join(generate.split()), e.name  # argparse wraps at hyphens
    section = readme[readme.index("### Draft-length policies"):readme.index("## Library")]
    documented = {row.split("`")[1].removeprefix("POLICY+").split("[")[0].split(":")[0]
                  for row in section.splitlines() if row.startswith("| `")}
    assert documented <= {e.name for e in policy_entries()} and "svip" in documented
    assert set(POLICY_NAMES) == {e.name for e in policies} and POLICY_NAMES[0] == "auto"
    searched = {c.partition(":")[0] for c in CANDIDATES}
    assert searched == {e.name for e in policies if e.grid != ()}
    assert {c.partition(":")[0] for c in PROPOSERS} == {"lookup", "lookup-tree"}
    assert {c.partition(":")[0] for c in EXPANDERS} == {"cape"}
