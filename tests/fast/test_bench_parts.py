"""Benchmark pieces without models: prompts, the two speed metrics, the peer adapter, the
cost model's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from svip_local.bench import peer
from svip_local.bench.prompts import Prompt, load_prompts, parse_prompts, select
from svip_local.bench.report import markdown
from svip_local.bench.result import BenchResult, label
from svip_local.bench.runner import BenchItem, RunRecord, run_items, summarize
from svip_local.errors import InvalidRequestError
from svip_local.events import GenerationStats
from svip_local.policies import Constant
from svip_local.sampling import SamplingParams
from tests.support.peer import fake_runner
from tests.support.sim import make_costs


def rows(*items: tuple[str, str]) -> list[str]:
    return [json.dumps({"question_id": i, "category": c, "turns": [t, "second turn"]})
            for i, (c, t) in enumerate(items)]


def test_prompts_fold_mt_bench_and_keep_the_first_turn_raw() -> None:
    prompts = parse_prompts(rows(("writing", "Write it.\n"), ("roleplay", "Play."),
                                 ("qa", "Why?")))
    assert [(p.category, p.text) for p in prompts] == [("mt-bench", "Write it.\n"),
                                                       ("mt-bench", "Play."), ("qa", "Why?")]
    assert parse_prompts(['{"category": "rag", "prompt": "x"}'])[0].text == "x"


def test_select_takes_benchmarks_from_the_start_and_calibration_from_the_end() -> None:
    prompts = parse_prompts(rows(*[("qa", f"q{i}") for i in range(5)],
                                 *[("rag", f"r{i}") for i in range(5)]))
    assert [p.text for p in select(prompts, 2)] == ["q0", "q1", "r0", "r1"]
    assert [p.text for p in select(prompts, 2, from_end=True)] == ["q3", "q4", "r3", "r4"]
    assert [p.text for p in select(prompts, 1, categories=["rag"])] == ["r0"]
    with pytest.raises(InvalidRequestError, match="no prompts of category"):
        select(prompts, 1, categories=["math_reasoning"])


@pytest.mark.parametrize(("line", "message"), [("{not json", "not a prompt row"),
                                               ('{"turns": []}', "not a prompt row"),
                                               ('{"turns": [""]}', "empty")])
def test_bad_prompt_rows_name_the_line(line: str, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=f"f.jsonl:2: .*{message}|{message}"):
        parse_prompts(['{"prompt": "ok"}', line], origin="f.jsonl")


def test_builtin_prompts_cover_every_category(tmp_path: Path) -> None:
    prompts = load_prompts(None)
    assert {p.category for p in prompts} == {"mt-bench", "translation", "summarization", "qa",
                                             "math_reasoning", "rag"}
    with pytest.raises(InvalidRequestError, match="not found"):
        load_prompts(tmp_path / "missing.jsonl")


def record(policy: str, prompt: str, generated: int, wall: float, group: str = "qa",
           drafted: int = 0, accepted: int = 0, rounds: int = 0) -> RunRecord:
    return RunRecord("specbench", group, prompt, 0.0, 64, policy, policy, 0, generated, wall,
                     0.1, drafted, accepted, rounds=rounds or generated)


def test_both_speed_metrics_and_paired_speedups() -> None:
    recs = [record("none", "a", 100, 10.0), record("none", "b", 10, 0.5),
            record("svip", "a", 100, 5.0, drafted=80, accepted=60, rounds=40),
            record("svip", "b", 10, 1.0, drafted=8, accepted=2, rounds=8)]
    by = {(s.group, s.policy): s for s in summarize(recs)}
    base, svip = by[("qa", "none")], by[("qa", "svip")]
    assert base.mean_tps == pytest.approx((10 + 20) / 2)  # the paper's: mean of rates
    assert base.total_tps == pytest.approx(110 / 10.5)  # total tokens / total time
    assert svip.mean_tps == pytest.approx((20 + 10) / 2)
    assert svip.speedup == pytest.approx(1.0)
    assert svip.speedup_total == pytest.approx((110 / 6.0) / (110 / 10.5))
    assert (svip.speedup_min, svip.speedup_max) == pytest.approx((0.5, 2.0))
    assert svip.acceptance == pytest.approx(62 / 88)
    assert svip.mean_draft == pytest.approx(88 / 48)
    assert by[("all", "svip")].runs == 2


class RecordingEngine:
    """Stands in for the engine where only the arguments of each run matter."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, bool]] = []

    def tokenize(self, text: str, *, parse_special: bool = False) -> list[int]:
        return [1, 2, 3]

    def reset(self) -> None:
        pass

    def complete(self, ids: list[int], *, max_tokens: int, sampling: SamplingParams,
                 policy: object, ignore_eos: bool, regions: object = ()) -> SimpleNamespace:
        self.calls.append((sampling.temperature, ignore_eos))
        stats = GenerationStats(policy="x", generated=max_tokens, wall_s=1.0)
        return SimpleNamespace(stats=stats, finish_reason="length")


def test_sampled_runs_are_fixed_length_and_greedy_ones_stop_at_end_of_text() -> None:
    # Sampled runs of different policies would otherwise end at different lengths and their
    # speeds would compare lengths, not policies.
    engine = RecordingEngine()
    item = BenchItem("specbench", "qa", Prompt("1", "qa", "Hi"), 16, False)
    for temp in (0.0, 1.0):
        run_items(engine, [item], ["constant:2"], temperature=temp,  # type: ignore[arg-type]
                  policies={"constant:2": Constant(2)})
    assert engine.calls == [(0.0, False), (1.0, True)]


def test_headline_says_when_calibrated_ran_the_policy_it_is_compared_with() -> None:
    def headline(auto_as: str) -> str:
        auto = record("calibrated", "a", 100, 4.2)
        auto.resolved = auto_as
        recs = [record("none", "a", 100, 10.0), record("constant:2", "a", 100, 5.0),
                record("svip:0.3", "a", 100, 4.0), auto]
        result = BenchResult({}, recs, [], summarize(recs), [], [r.policy for r in recs])
        return next(line for line in markdown(result).splitlines()
                    if "calibrated vs SVIP" in line)

    assert "calibrated vs SVIP: -4.8% (same policy: run-to-run spread)" in headline("svip:0.3")
    other = headline("constant:2")
    assert "calibrated vs SVIP: -4.8%" in other and "same policy" not in other


def test_labels_read_like_the_paper() -> None:
    assert label("none") == "target alone"
    assert label("calibrated", "constant:2") == "calibrated (→ constant:2)"
    assert label("auto", "auto → lookup") == "auto → lookup"
    assert label("llama.cpp:16:0.75") == "llama.cpp n_max=16 p_min=0.75"
    assert label("svip:0.3") == "SVIP h=0.3" and label("constant:4") == "constant k=4"
    assert label("svip:0.3+lookup:4:8") == "SVIP h=0.3 + prompt lookup 4:8"
    assert label("lookup:3:4") == "prompt lookup 3:4"


def test_peer_runs_are_records_and_the_sweep_picks_the_fastest(tmp_path: Path) -> None:
    binary = tmp_path / "llama-speculative-simple"
    binary.write_text("")
    calls: list[dict] = []
    p = peer.Peer(tmp_path / "t.gguf", tmp_path / "d.gguf", threads=2, n_ctx=4096,
                  binary=binary, runner=fake_runner(calls))  # type: ignore[arg-type]
    item = BenchItem("longform", "128", Prompt("1", "mt-bench", "Hi"), 128, True)
    rec = p.run(item, peer.spec(4, 0.5), 0.0, 7, 0)
    assert rec.tokens_per_second == pytest.approx(64 / (8.0 / 3))
    assert (rec.drafted, rec.accepted, rec.rounds) == (40, 30, 34)
    assert calls[0]["n_max"] == 4 and calls[0]["p_min"] == 0.5 and calls[0]["seed"] == 7
    assert "--ignore-eos" in calls[0]["extra_args"]
    assert "--no-repack" not in calls[0]["extra_args"]  # repacked weights, as svip_local loads
    best, table = peer.sweep(p, [item], [(1, 0.0), (3, 0.0), (8, 0.75)])
    assert best in ("llama.cpp:3:0", "llama.cpp:8:0.75") and len(table) == 3
    assert peer.parse_spec(best)[0] in (3, 8)


def test_the_peer_turns_repacking_off_with_the_product(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVIP_LOCAL_EXTRA_BUFTS", "0")
    binary = tmp_path / "llama-speculative-simple"
    binary.write_text("")
    calls: list[dict] = []
    p = peer.Peer(tmp_path / "t.gguf", tmp_path / "d.gguf", threads=2, n_ctx=4096,
                  binary=binary, runner=fake_runner(calls))  # type: ignore[arg-type]
    p.run(BenchItem("specbench", "qa", Prompt("1", "qa", "Hi"), 8, False), peer.spec(2, 0), 0.0,
          0, 0)
    assert calls[0]["extra_args"] == ("--no-repack",)


def test_peer_without_its_binary_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="build_llama_tools.sh"):
        peer.Peer(tmp_path / "t", tmp_path / "d", threads=2, n_ctx=64,
                  binary=tmp_path / "missing", runner=fake_runner([]))  # type: ignore[arg-type]


def test_cost_model_arithmetic() -> None:
    costs = make_costs(lambda b: 0.1 + 0.01 * b, draft_prefill=(0.05, 0.001, 1e-6),
                       target_depth_s=1e-5, base_depth=100)
    assert costs.verify(4, 100) == pytest.approx(0.14)
    assert costs.verify(4, 200) == pytest.approx(0.14 + 1e-5 * 4 * 100)
    assert costs.verify(20, 100) == pytest.approx(0.1 + 0.01 * 20)  # extended along the slope
    assert costs.draft(2, 0) == pytest.approx(0.02)
    assert costs.draft(10, 0) == pytest.approx(0.05 + 0.01 + 1e-4)  # beyond the table: prefill
    assert costs.draft(10, 50) == pytest.approx(0.05 + 0.01 + 1e-6 * (100 + 1000))
