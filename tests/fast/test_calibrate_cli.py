"""`svip-local calibrate` end to end on tiny models: measures, stores, and `calibrated` uses it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from svip_local import Engine, SamplingParams
from svip_local.bench.traces import TraceSet
from svip_local.calibration.copies import FEATURES, PRIOR_PRECISION
from svip_local.calibration.costs import MAX_COPY_VERIFY
from svip_local.cli import main

pytestmark = pytest.mark.usefixtures("own_calibration_store")


def pair_args(target: Path, draft: Path) -> list[str]:
    return ["--target", str(target), "--draft", str(draft), "--threads", "1", "--n-ctx", "512"]


def test_calibrate_stores_a_choice_that_calibrated_then_uses(
        tiny_target: Path, tiny_draft_noisy: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    code = main(["calibrate", *pair_args(tiny_target, tiny_draft_noisy), "--per-category", "1",
                 "--max-tokens", "24", "--repeats", "2", "--traces", str(tmp_path / "t.npz"),
                 "--validate", "--json"])
    assert code == 0
    captured = capsys.readouterr()
    cal = json.loads(captured.out)
    assert cal["settings"]["positions"] > 0 and len(cal["costs"]["verify_s"]) == MAX_COPY_VERIFY
    simulated = {c["policy"]: c["mean_tokens_per_s"] for c in cal["simulated"]}
    assert {"none", "constant:4", "svip:0.3"} <= set(simulated)
    # The best candidate, or a simpler one within the held-out optimism (or the target
    # alone, or SVIP, within the margins a simulated win must clear).
    check = cal["validation"]
    optimism = max(0.0, check["in_sample"] / check["held_out"] - 1.0) + 0.03
    assert simulated[cal["choice"]] * (1 + optimism) >= cal["simulated"][0]["mean_tokens_per_s"]
    assert "[validate] none" in captured.err
    assert len(list((tmp_path / "calibration").glob("*.json"))) == 1
    # The built-in set, 1 per category, greedy and at temperature 1 (the default ones).
    traces = TraceSet.load(tmp_path / "t.npz").traces
    assert sorted(t.temperature for t in traces) == [0.0] * 6 + [1.0] * 6
    [sampled] = cal["sampled"]
    assert sampled["temperature"] == 1.0
    assert sampled["choice"] in (sampled["simulated"][0]["policy"], "svip:0.3", "none")
    # Sampled copies replay against the sampled path: lookup is a candidate there too. The
    # greedy tiny target repeats itself, so the greedy copy model learnt from examples.
    assert any("lookup" in c["policy"] for c in sampled["simulated"])
    assert cal["copies"]["precision"] != [PRIOR_PRECISION] * len(FEATURES)

    with caplog.at_level(logging.WARNING), \
            Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1,
                   policy="calibrated") as engine:
        greedy = engine.policy.for_sampling(SamplingParams())
        assert greedy.name == engine.make_policy(cal["choice"]).name == cal["choice"]
    assert "no calibration" not in caplog.text

    assert main(["calibrate", *pair_args(tiny_target, tiny_draft_noisy), "--show"]) == 0
    assert f"choice: greedy {cal['choice']}; temperature 1 {sampled['choice']}" \
        in capsys.readouterr().out


def test_show_without_a_calibration_fails(tiny_target: Path, tiny_draft_noisy: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", *pair_args(tiny_target, tiny_draft_noisy), "--show"]) == 1
    assert "no calibration" in capsys.readouterr().err


def test_calibrate_needs_a_draft(tiny_target: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--target", str(tiny_target), "--threads", "1"]) == 1
    assert "needs a draft" in capsys.readouterr().err
