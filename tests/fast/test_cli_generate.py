"""`svip-local generate` end to end through the console entry point, on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from svip_local import Engine
from svip_local.cli import main


def test_generate_json_matches_the_library(tiny_target: Path, tiny_draft_noisy: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "--target", str(tiny_target), "--draft", str(tiny_draft_noisy),
                 "--prompt", "Hello there", "--max-tokens", "24", "--policy", "svip",
                 "--ignore-eos", "--threads", "1", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with Engine(tiny_target, n_ctx=4096, n_threads=1) as alone:
        expected = alone.complete("Hello there", max_tokens=24, ignore_eos=True)
        assert result["prompt_tokens"] == alone.tokenize("Hello there")
    assert result["tokens"] == list(expected.tokens)
    assert result["text"] == expected.text
    stats = result["stats"]
    for key in ("tokens_per_second", "acceptance_rate", "mean_accepted_length",
                "mean_draft_length", "rounds", "drafted", "accepted", "draft_s", "verify_s",
                "prefill_s", "overhead_s"):
        assert key in stats
    assert stats["rounds"] > 0 and stats["drafted"] >= stats["accepted"]


def test_generate_reports_user_errors_cleanly(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "--target", str(tmp_path / "nope.gguf"), "--prompt", "x"])
    assert code == 1
    assert "model file not found" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x"]) == 1
    assert "name a registry pair or give --target" in capsys.readouterr().err
