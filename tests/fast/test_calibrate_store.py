"""The calibration store, and `calibrated` / `svip-cost` resolving through it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from svip_local import Engine, SamplingParams
from svip_local.calibration import (
    AcceptanceMap,
    Calibration,
    PairIdentity,
    TemperatureChoice,
    store,
)
from svip_local.errors import InvalidRequestError
from svip_local.policies import (
    Constant,
    CostAwareCape,
    CostAwareSvip,
    DraftPolicy,
    NoDraft,
    Plan,
    PromptLookup,
    Svip,
)
from tests.support.sim import make_costs

pytestmark = pytest.mark.usefixtures("own_calibration_store")


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Engine:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=256, n_threads=1, policy="none") as eng:
        yield eng


SAMPLED_MAP = AcceptanceMap((0.0, 1.0), (0.6, 0.2), (0.5, 0.1))


def calibration(engine: Engine, choice: str, sampled: dict[float, str] | None = None
                ) -> Calibration:
    """A stored calibration choosing `choice` greedily (svip-cost rate 12.5) and `sampled`
    per temperature (rate 8)."""
    return Calibration(
        PairIdentity.of(engine.target_model.path, engine.draft_model.path), engine.machine,
        TemperatureChoice(0.0, choice, AcceptanceMap((0.0, 1.0), (0.9, 0.5), (0.8, 0.4)), 12.5,
                          [{"policy": choice, "tokens_per_s": 12.5}]),
        make_costs(lambda b: 0.1 + 0.01 * b),
        [TemperatureChoice(t, c, SAMPLED_MAP, 8.0) for t, c in (sampled or {}).items()],
        {"max_tokens": 64})


def current(plan: Plan, temperature: float = 0.0) -> DraftPolicy:
    """The length policy `plan` runs in a generation at `temperature`."""
    return plan.for_sampling(SamplingParams(temperature=temperature)).policy


@pytest.mark.parametrize("sampled", [None, {1.0: "svip:0.2", 0.7: "none"}])
def test_round_trip_under_the_configured_directory(engine: Engine, tmp_path: Path,
                                                   sampled: dict[float, str] | None) -> None:
    cal = calibration(engine, "constant:3", sampled)
    path = store.save(cal)
    assert path.parent == tmp_path / "calibration" and path.suffix == ".json"
    loaded = store.load(cal.pair, cal.machine)
    assert loaded is not None and loaded.to_dict() == cal.to_dict()
    assert [c.choice for c in loaded.sampled] == list((sampled or {}).values())


def test_a_file_from_before_sampled_choices_loads(engine: Engine) -> None:
    cal = calibration(engine, "constant:3")
    data = cal.to_dict()
    del data["sampled"], data["temperature"]
    loaded = Calibration.from_dict(data)
    assert loaded.choice == "constant:3" and loaded.sampled == []
    assert loaded.greedy.temperature == 0.0


def test_other_machine_or_threads_has_no_calibration(engine: Engine) -> None:
    cal = calibration(engine, "constant:3")
    store.save(cal)
    other = type(cal.machine)(cal.machine.cpu, cal.machine.gpu, cal.machine.n_gpu_layers,
                              cal.machine.threads + 1)
    assert store.load(cal.pair, other) is None


def test_a_damaged_file_is_ignored_with_a_warning(engine: Engine,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    cal = calibration(engine, "constant:3")
    store.calibration_path(cal.pair, cal.machine).parent.mkdir(parents=True, exist_ok=True)
    store.calibration_path(cal.pair, cal.machine).write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert store.load(cal.pair, cal.machine) is None
    assert "calibrate" in caplog.text


def test_calibrated_without_a_calibration_says_how_to_make_one(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="svip-local calibrate.*or use `auto`"):
        engine.make_policy("calibrated")


@pytest.mark.parametrize(("choice", "kind"), [("none", NoDraft), ("constant:3", Constant),
                                              ("svip:0.2", Svip),
                                              ("svip-cost:9.5", CostAwareSvip)])
def test_calibrated_uses_the_stored_choice(engine: Engine, choice: str, kind: type,
                                     caplog: pytest.LogCaptureFixture) -> None:
    store.save(calibration(engine, choice))
    with caplog.at_level(logging.WARNING):
        policy = current(engine.make_policy("calibrated"))
    assert isinstance(policy, kind) and policy.name == choice
    assert "no calibration" not in caplog.text


def test_calibrated_runs_the_choice_of_the_nearest_calibrated_temperature(engine: Engine) -> None:
    store.save(calibration(engine, "constant:3", {1.0: "svip:0.2"}))
    auto = engine.make_policy("calibrated")
    ran = {t: engine.complete("The quick brown fox", max_tokens=8, policy=auto,
                              sampling=SamplingParams(temperature=t, seed=1)).stats.policy
           for t in (0.0, 0.3, 0.8, 1.0, 1.5)}
    assert ran == {0.0: "constant:3", 0.3: "constant:3", 0.8: "svip:0.2", 1.0: "svip:0.2",
                   1.5: "svip:0.2"}


def test_svip_cost_uses_the_calibrated_rate_unless_given(engine: Engine) -> None:
    store.save(calibration(engine, "none", {1.0: "none"}))
    calibrated = engine.make_policy("svip-cost")
    greedy = current(calibrated)
    assert isinstance(greedy, CostAwareSvip) and greedy.rate == 12.5
    sampled = current(calibrated, 1.0)
    # Sampling has its own rate and acceptance map: tokens are accepted less often.
    assert isinstance(sampled, CostAwareSvip) and sampled.rate == 8.0
    assert sampled.acceptance == SAMPLED_MAP
    assert current(engine.make_policy("svip-cost:7")).rate == 7.0  # type: ignore[attr-defined]


def test_svip_cost_needs_a_calibration(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="svip-local calibrate"):
        engine.make_policy("svip-cost")


def test_a_new_engine_starts_with_the_calibrated_policy(engine: Engine, tiny_target: Path,
                                                        tiny_draft_noisy: Path) -> None:
    store.save(calibration(engine, "constant:2"))
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=256, n_threads=1,
                policy="calibrated") as fresh:
        assert current(fresh.policy).name == "constant:2"


def test_calibrated_without_a_draft_is_the_target_alone(tiny_target: Path) -> None:
    with Engine(tiny_target, n_ctx=256, n_threads=1, policy="calibrated") as alone:
        assert isinstance(current(alone.policy), NoDraft)


def test_calibrated_without_sampled_choices_copies_only_in_greedy_generations(engine: Engine
                                                                       ) -> None:
    """A calibration from before sampled traces measured copies on greedy traces only: a
    sampled generation under `calibrated` drafts with the inner policy alone, while an explicit
    lookup copies whatever the sampling."""
    store.save(calibration(engine, "svip-cost:9.5+lookup:1:8"))
    auto = engine.make_policy("calibrated")
    greedy_strategy = auto.for_sampling(SamplingParams())
    assert isinstance(greedy_strategy.proposer, PromptLookup)
    assert isinstance(greedy_strategy.policy, CostAwareSvip)
    assert greedy_strategy.name == "svip-cost:9.5+lookup:1:8"
    sampled_strategy = auto.for_sampling(SamplingParams(temperature=1.0))
    assert sampled_strategy.name == "svip-cost:9.5" and sampled_strategy.proposer is None
    prompt, sampled = "The quick brown fox", SamplingParams(temperature=1.0, seed=3)
    greedy = engine.complete(prompt, max_tokens=60, policy=auto, ignore_eos=True)
    assert greedy.stats.lookup_rounds > 0  # the tiny target repeats itself
    assert engine.complete(prompt, max_tokens=60, policy=auto, ignore_eos=True,
                           sampling=sampled).stats.lookup_rounds == 0
    explicit = engine.complete(prompt, max_tokens=60, policy="lookup:1:8", ignore_eos=True,
                               sampling=sampled)
    assert explicit.stats.lookup_rounds > 0


@pytest.mark.parametrize("spec", ["calibrated", "auto"])
def test_a_choice_that_prices_its_tree_runs_under_calibrated_and_auto(engine: Engine,
                                                                      spec: str) -> None:
    """cape-cost reads this machine's costs from the calibration, also when `auto` takes it
    as the drafting rounds' expander (it once built it without one, and the default policy
    failed on every machine whose calibration chose it)."""
    store.save(calibration(engine, "svip:0.3+cape-cost:12.5", {1.0: "svip:0.2"}))
    plan = engine.make_policy(spec)
    expander = plan.for_sampling(SamplingParams()).expander
    assert isinstance(expander, CostAwareCape) and expander.rate == 12.5
    assert plan.for_sampling(SamplingParams(temperature=1.0)).expander is None
    prompt = "The quick brown fox"
    alone = engine.complete(prompt, max_tokens=24, policy="none", ignore_eos=True)
    assert engine.complete(prompt, max_tokens=24, policy=plan,
                           ignore_eos=True).tokens == alone.tokens
