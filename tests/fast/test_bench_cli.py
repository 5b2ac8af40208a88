"""`svip-local bench` on tiny models with a 3-prompt file: runs, writes the report, JSON,
plots and traces; scripts/bench_policies.py is the same code with greedy defaults."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from svip_local.bench.traces import TraceSet
from svip_local.cli import main

ROWS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a short poem about the sea.",
                                                         "Now shorter."]},
    {"question_id": 1001, "category": "qa", "turns": ["Where is the quick brown fox?"]},
    {"question_id": 2001, "category": "translation",
     "turns": ["Translate German to English: Der Hund schläft."]},
]
PLOTS = {"speedup_by_category.png", "speedup_by_length.png", "draft_lengths.png",
         "acceptance_vs_entropy.png", "acceptance_calibration.png"}


pytestmark = pytest.mark.usefixtures("own_calibration_store")


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return path


def pair_args(target: Path, draft: Path) -> list[str]:
    return ["--target", str(target), "--draft", str(draft), "--threads", "1", "--n-ctx", "512"]


def test_bench_writes_tables_json_and_plots(tiny_target: Path, tiny_draft_noisy: Path,
                                            prompts: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["bench", *pair_args(tiny_target, tiny_draft_noisy), "--prompts", str(prompts),
                 "--max-tokens", "16", "--lengths", "16,32", "--temperatures", "0,1",
                 "--calibration-per-category", "1", "--out", str(out)])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"report.md", "bench.json", "traces.npz", *PLOTS}
    for png in PLOTS:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = (out / "report.md").read_text()
    assert "cost-aware SVIP vs SVIP" in report and "SVIP vs best constant" in report
    for heading in ("Headline", "SpecBench, greedy: speedup by category",
                    "SpecBench, temperature 1",
                    "MT-Bench long-form, greedy: speedup by generation length",
                    "Simulator vs measurement (temperature 1", "Largest speedup error",
                    "Calibration, temperature 1"):
        assert heading in report
    for name in ("target alone", "constant k=8", "HF heuristic", "p_min 0.75", "AdaEDL",
                 "SVIP h=0.3", "cost-aware SVIP", "auto →", "oracle (simulated)"):
        assert name in report

    data = json.loads((out / "bench.json").read_text())
    overall = {(s["temperature"], s["policy"]): s for s in data["summaries"]
               if s["suite"] == "specbench" and s["group"] == "all" and not s["simulated"]}
    assert overall[(0.0, "none")]["speedup"] == pytest.approx(1.0)
    assert overall[(0.0, "none")]["runs"] == 3 and overall[(1.0, "svip:0.3")]["runs"] == 3
    assert {(c["temperature"], c["policy"], c["group"]) for c in data["validation"]} >= {
        (t, p, "all") for t in (0.0, 1.0) for p in ("none", "constant:4")}
    assert any(s["policy"] == "oracle" for s in data["summaries"])
    # How each rule predicts acceptance, per temperature, on held-out folds of the prompts.
    assert [a["temperature"] for a in data["acceptance_prediction"]] == [0.0, 1.0]
    for at in data["acceptance_prediction"]:
        assert set(at["predictors"]) == {"entropy map", "top-1 probability", "head"}
        assert all(0 <= r["auc"] <= 1 and r["log_loss"] > 0 for r in at["predictors"].values())
    assert "How well each rule predicts acceptance" in report
    # One trace per target-alone run: 3 SpecBench prompts and the MT-Bench one at 2 lengths,
    # greedy and sampled (those with their acceptance chances).
    traces = TraceSet.load(out / "traces.npz").traces
    assert sorted(t.temperature for t in traces) == [0.0] * 5 + [1.0] * 5
    assert all(len(t.accept_prob) == (len(t.target) if t.temperature else 0) for t in traces)
    printed = capsys.readouterr().out
    assert "longform, greedy" in printed  # every suite that ran gets its terminal table
    greedy, sampled = printed.split("specbench, temperature 1")
    # Sampled traces are predicted too; only the oracle row (itself simulated) has none.
    for table in (greedy.split("specbench, greedy")[1], sampled):
        rows = [line for line in table.split("\n\n")[0].splitlines()[3:] if line]
        assert rows and all((line.split()[-1] == "–") == line.startswith("oracle")
                            for line in rows)


def test_bench_policies_script_is_greedy_and_plotless(tiny_target: Path, tiny_draft_noisy: Path,
                                                      prompts: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bp"
    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_policies.py"
    monkeypatch.setattr("sys.argv", [str(script), *pair_args(tiny_target, tiny_draft_noisy),
                                     "--prompts", str(prompts), "--max-tokens", "12",
                                     "--policies", "constant:2,svip:0.3", "--no-calibrate",
                                     "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 0
    assert {p.name for p in out.iterdir()} == {"report.md", "bench.json", "traces.npz"}
    data = json.loads((out / "bench.json").read_text())
    assert data["policies"] == ["none", "constant:2", "svip:0.3"]
    assert {s["temperature"] for s in data["summaries"]} == {0.0}
    assert {s["suite"] for s in data["summaries"]} == {"specbench"}
    table = capsys.readouterr().out
    assert "target alone" in table and "constant k=2" in table and "SVIP h=0.3" in table


def test_bench_sweeps_the_peer_and_runs_its_best_setting(
        tiny_target: Path, tiny_draft_noisy: Path, prompts: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from svip_local.bench import peer
    from tests.support.peer import fake_runner

    calls: list[dict] = []
    monkeypatch.setattr(peer, "peer_runner", fake_runner(calls))
    binary = tmp_path / "llama-speculative-simple"
    binary.write_text("")
    out = tmp_path / "peer"
    assert main(["bench", *pair_args(tiny_target, tiny_draft_noisy), "--prompts", str(prompts),
                 "--max-tokens", "12", "--lengths", "", "--temperatures", "0", "--policies",
                 "constant:2", "--no-calibrate", "--no-plots", "--peer", "--peer-binary",
                 str(binary), "--peer-grid", "1:0,3:0,8:0.75", "--peer-sweep-prompts", "1",
                 "--out", str(out)]) == 0
    data = json.loads((out / "bench.json").read_text())
    # The fake peer is fastest at n_max >= 3; its best setting then runs on all 3 prompts.
    assert [r["policy"] for r in data["peer_sweep"]] == ["llama.cpp:1:0", "llama.cpp:3:0",
                                                         "llama.cpp:8:0.75"]
    assert data["policies"] == ["none", "constant:2", "llama.cpp:3:0"]
    assert len(calls) == 3 + 3
    assert "llama.cpp n_max=3 p_min=0" in (out / "report.md").read_text()


def test_bench_runs_llama_cpp_python_beside_a_fresh_auto(
        tiny_target: Path, tiny_draft_noisy: Path, prompts: Path, tmp_path: Path) -> None:
    out = tmp_path / "py"
    assert main(["bench", *pair_args(tiny_target, tiny_draft_noisy), "--prompts", str(prompts),
                 "--max-tokens", "12", "--lengths", "", "--temperatures", "0,1", "--policies",
                 "auto,llama-cpp-python+lookup:4", "--python-peer", "--fresh-auto",
                 "--no-calibrate", "--no-plots", "--out", str(out)]) == 0
    data = json.loads((out / "bench.json").read_text())
    assert data["policies"] == ["none", "auto", "llama-cpp-python+lookup:4", "llama-cpp-python",
                                "llama-cpp-python+lookup"]
    runs = {(r["temperature"], r["policy"], r["prompt_id"]): r for r in data["records"]}
    for (temp, policy, prompt), rec in runs.items():
        if temp == 0:  # the same greedy text, so the same length, as the target alone
            assert rec["generated"] == runs[(0.0, "none", prompt)]["generated"], policy
        else:  # end of text ignored by every contestant (llama-cpp-python's lookup may
            # count a few tokens past max_tokens: it reports what it generated)
            assert rec["generated"] >= 12, policy
    assert runs[(0.0, "llama-cpp-python+lookup:4", "1001")]["resolved"] == (
        "Llama + LlamaPromptLookupDecoding(num_pred_tokens=4, max_ngram_size=2)")
    assert "auto vs llama-cpp-python best" in (out / "report.md").read_text()


@pytest.mark.parametrize("spec", ["llama-cpp-python+lookup:0", "llama-cpp-python+lookupx",
                                  "llama-cpp-python+lookup:a", "llama-cpp-python+lookup:1:2:3"])
def test_a_bad_llama_cpp_python_spec_is_refused(spec: str) -> None:
    from svip_local.bench.python_peer import parse_spec
    from svip_local.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="expected llama-cpp-python"):
        parse_spec(spec)


def test_the_lookup_peer_takes_a_prompt_longer_than_a_batch(tiny_target: Path) -> None:
    """llama-cpp-python sizes its logits buffer by n_batch unless logits_all is passed: a
    600-token prompt failed there until the peer passed it."""
    from svip_local.bench.prompts import Prompt
    from svip_local.bench.python_peer import LOOKUP, PythonPeer
    from svip_local.bench.runner import BenchItem
    from svip_local.native import Model

    text = "the quick brown fox " * 70
    model = Model(tiny_target)
    try:
        assert 512 < len(model.tokenize(text)) < 1024 - 8
    finally:
        model.close()
    peer = PythonPeer(tiny_target, threads=1, n_ctx=1024)
    try:
        item = BenchItem("specbench", "qa", Prompt("long", "qa", text), 8, True)
        assert peer.run(item, LOOKUP, 0.0, 0, 0).generated >= 8
    finally:
        peer.close()


def test_bench_runs_the_code_edit_workload_with_an_auto_from_the_calibration(
        tiny_target: Path, tiny_draft_noisy: Path, tmp_path: Path) -> None:
    """Chat conversations rendered with the pair's template (special tokens parsed, where
    each message starts known), their own table, `auto` as a first run and from the
    calibration side by side, and an oracle that copies."""
    out = tmp_path / "edit"
    args = ["bench", "--target", str(tiny_target), "--draft", str(tiny_draft_noisy),
            "--threads", "1", "--n-ctx", "2048", "--workload", "code-edit",
            "--chat-max-tokens", "8", "--temperatures", "0", "--policies",
            "auto,auto@calibration,lookup:4:16", "--fresh-auto", "--no-plots",
            "--calibration-per-category", "1", "--out", str(out)]
    assert main(args) == 0
    data = json.loads((out / "bench.json").read_text())
    assert {s["suite"] for s in data["summaries"]} == {"code-edit"}
    groups = {s["group"] for s in data["summaries"]}
    assert groups == {"rename", "fix", "docstring", "port", "all"}
    runs = [r for r in data["records"] if not r["simulated"]]
    assert {r["policy"] for r in runs} == {"none", "auto", "auto@calibration", "lookup:4:16"}
    assert len({r["prompt_id"] for r in runs}) >= 12
    traces = TraceSet.load(out / "traces.npz").traces
    assert all(t.regions and t.regions[-1][1] == "user" for t in traces)
    report = (out / "report.md").read_text()
    assert "Code edits (chat), greedy: speedup by category" in report
    assert "auto, from the calibration" in report and "oracle (simulated)" in report


@pytest.mark.parametrize(("extra", "message"), [
    (["--policies", "svip:abc"], "bad argument in policy 'svip:abc'"),
    (["--policies", "lookup-tree:99:9999"], "lookup-tree's ngram must be in"),
    (["--policies", "llama-cpp-python+lookup:0"], "expected llama-cpp-python"),
    (["--workload", "code-edit-calibration"], "unknown workload 'code-edit-calibration'"),
])
def test_bench_refuses_a_bad_spec_before_loading_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
        message: str) -> None:
    """The files do not even exist: the spec is checked first, not after the models load
    and calibration starts."""
    missing = tmp_path / "missing.gguf"
    code = main(["bench", "--target", str(missing), "--draft", str(missing), *extra,
                 "--out", str(tmp_path / "x")])
    assert code != 0
    err = capsys.readouterr().err
    assert message in err and "missing.gguf" not in err


@pytest.mark.parametrize("n", ["0", "-2"])
def test_bench_refuses_fewer_than_one_conversation_per_kind(
        n: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--workload", "code-edit", "--chat-per-category", n])
    assert exit_info.value.code == 2
    assert f"--chat-per-category: must be at least 1, got {n}" in capsys.readouterr().err
