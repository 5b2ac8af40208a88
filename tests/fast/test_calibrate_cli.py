"""`svip-local calibrate` end to end on tiny models: measures, stores, and `calibrated` uses it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from svip_local import Engine, SamplingParams
from svip_local.bench.traces import TraceSet
from svip_local.calibration.costs import MAX_TREE_VERIFY
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
    assert cal["settings"]["positions"] > 0 and len(cal["costs"]["verify_s"]) == MAX_TREE_VERIFY
    assert cal["choice"] == cal["simulated"][0]["policy"] or cal["choice"] == "none"
    assert {"none", "constant:4", "svip:0.3"} <= {c["policy"] for c in cal["simulated"]}
    assert "[validate] none" in captured.err
    assert len(list((tmp_path / "calibration").glob("*.json"))) == 1
    # The built-in set, 1 per category, greedy and at temperature 1 (the default ones).
    traces = TraceSet.load(tmp_path / "t.npz").traces
    assert sorted(t.temperature for t in traces) == [0.0] * 6 + [1.0] * 6
    [sampled] = cal["sampled"]
    assert sampled["temperature"] == 1.0
    assert sampled["choice"] in (sampled["simulated"][0]["policy"], "svip:0.3", "none")
    # Under sampling the replay does not model copies: no lookup candidates.
    assert not any("lookup" in c["policy"] for c in sampled["simulated"])

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
