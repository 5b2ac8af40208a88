"""llama.cpp's tree speculative example `llama-speculative` as a peer: specs
`llama.cpp-tree:N_PARALLEL:P_SPLIT[:N_MAX]`, its command line, and parsing what it printed in
real runs (captured from the binary that scripts/build_llama_tools.sh builds, on the tiny test
pair); the binary itself runs only where it is built."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from svip_local.bench import peer, peer_runner
from svip_local.bench.peer_output import PeerError, parse_output
from svip_local.bench.peer_runner import PeerArgs, build_command
from svip_local.bench.prompts import Prompt
from svip_local.bench.runner import BenchItem
from svip_local.errors import InvalidRequestError

PROMPT = "The quick brown fox"

# `llama-speculative -m target.gguf -md draft-noisy.gguf -np 3 --spec-draft-p-split 0.1
#  --spec-draft-n-max 6 -n 31 -t 1 -c 768 --temp 0.0 -s 0 -f prompt.txt --no-repack`
# (stderr in full, stdout decoded with errors="replace" as run_peer does)
TREE_STDERR = """\
0.00.014.670 I cmn          init: llama threadpool init, n_threads = 1
0.00.024.705 I cmn          init: llama threadpool init, n_threads = 1
0.00.045.460 I encoded    9 tokens in    0.001 seconds, speed: 9249.743 t/s
0.00.045.482 I decoded   32 tokens in    0.019 seconds, speed: 1694.467 t/s
0.00.045.495 I 
0.00.045.508 I n_draft   = 6
0.00.045.521 I n_predict = 32
0.00.045.533 I n_drafted = 66
0.00.045.546 I n_accept  = 20
0.00.045.559 I accept    = 30.303%
0.00.045.571 I 
0.00.045.584 I draft:

0.00.045.603 I 
0.00.045.616 I target:

0.00.045.630 I common_perf_print:    sampling time =       0.45 ms
0.00.045.643 I common_perf_print:    samplers time =       0.39 ms /    32 tokens
0.00.045.657 I common_perf_print:        load time =       3.62 ms
0.00.045.671 I common_perf_print: prompt eval time =       1.07 ms /    86 tokens (    0.01 ms per token, 80000.00 tokens per second)
0.00.045.685 I common_perf_print:        eval time =       0.00 ms /     1 runs   (    0.00 ms per token,      inf tokens per second)
0.00.045.698 I common_perf_print:       total time =      30.00 ms /    87 tokens
0.00.045.712 I common_perf_print: unaccounted time =      28.48 ms /  94.9 %      (total - sampling - prompt eval - eval) / (total)
0.00.045.725 I common_perf_print:    graphs reused =          0
"""  # noqa: E501
TREE_TEXT = (" runs\ufffd_ them read\ufffdk\ufffdarget w qui when\ufffd\u01c8 th\ufffd*oodand"
             "\ufffd\ufffd e have\ufffd\ufffd\ufffd\x03 firstbout\ufffd She")
TREE_STDOUT = "\n\n" + PROMPT + TREE_TEXT + "\n\n\n\n"

# The same run at `-lv 4`: the draft context's perf lines come first, under "draft:".
TREE_STDERR_LV4 = """\
0.00.047.533 I encoded    9 tokens in    0.001 seconds, speed: 10856.453 t/s
0.00.047.535 I decoded   32 tokens in    0.019 seconds, speed: 1643.132 t/s
0.00.047.535 I 
0.00.047.536 I n_draft   = 6
0.00.047.537 I n_predict = 32
0.00.047.538 I n_drafted = 66
0.00.047.538 I n_accept  = 20
0.00.047.539 I accept    = 30.303%
0.00.047.540 I 
0.00.047.540 I draft:

0.00.047.541 I llama_perf_context_print:        load time =       2.91 ms
0.00.047.544 I llama_perf_context_print: prompt eval time =      10.75 ms /    30 tokens (    0.36 ms per token,  2790.18 tokens per second)
0.00.047.546 I llama_perf_context_print:        eval time =       6.76 ms /    55 runs   (    0.12 ms per token,  8139.71 tokens per second)
0.00.047.547 I llama_perf_context_print:       total time =      20.44 ms /    85 tokens
0.00.047.548 I llama_perf_context_print:    graphs reused =         77
0.00.047.548 I 
0.00.047.548 I target:

0.00.047.549 I common_perf_print:    sampling time =       0.43 ms
0.00.047.550 I common_perf_print:    samplers time =       0.38 ms /    32 tokens
0.00.047.550 I common_perf_print:        load time =       3.37 ms
0.00.047.552 I common_perf_print: prompt eval time =       0.92 ms /    86 tokens (    0.01 ms per token, 93478.26 tokens per second)
0.00.047.554 I common_perf_print:        eval time =       0.00 ms /     1 runs   (    0.00 ms per token,      inf tokens per second)
0.00.047.555 I common_perf_print:       total time =      29.53 ms /    87 tokens
"""  # noqa: E501

# `--spec-draft-p-split 0`: the tree branched, the target decode failed, and the example went
# on to print a report and exit with status 0 (start and end of its stderr).
BRANCHED_STDERR = """\
0.00.013.188 I cmn          init: llama threadpool init, n_threads = 1
0.00.022.240 I cmn          init: llama threadpool init, n_threads = 1
0.00.032.221 E split_equal: sequential split is not supported when there are coupled sequences in the input batch (you may need to use the -kvu flag)
0.00.032.233 W decode: failed to find a memory slot for batch of size 9
0.00.033.142 E init: the tokens of sequence 0 in the input batch have inconsistent sequence positions:
 - the last position stored in the memory module of the context (i.e. the KV cache) for sequence 0 is X = 20
 - the tokens for sequence 0 in the input batch have a starting position of Y = 22
 it is required that the sequence positions remain consecutive: Y = X + 1
0.00.033.151 E decode: failed to initialize batch
0.00.051.036 I encoded    9 tokens in    0.001 seconds, speed: 10563.380 t/s
0.00.051.038 I decoded   32 tokens in    0.027 seconds, speed: 1172.892 t/s
0.00.051.039 I 
0.00.051.039 I n_draft   = 6
0.00.051.040 I n_predict = 32
0.00.051.040 I n_drafted = 142
0.00.051.046 I n_accept  = 7
0.00.051.047 I accept    = 4.930%
"""  # noqa: E501


def test_the_tree_command_line_takes_branches_and_split_and_a_context_per_branch() -> None:
    cmd = build_command(PeerArgs("t.gguf", "d.gguf", n_max=8, n_predict=63, threads=2,
                                 ctx=1024, temp=0.0, seed=3, n_parallel=4, p_split=0.25,
                                 binary="bin/llama-speculative"), "p.txt")
    assert cmd == ["bin/llama-speculative", "-m", "t.gguf", "-md", "d.gguf", "-np", "4",
                   "--spec-draft-p-split", "0.25", "--spec-draft-n-max", "8", "-n", "63",
                   "-t", "2", "-c", "4096", "--temp", "0.0", "-s", "3", "-f", "p.txt",
                   "--no-escape", "--no-repack"]
    # one chain: the context is not multiplied; repacking and GPU layers as for the simple one
    one = build_command(PeerArgs("t", "d", n_parallel=1, ctx=512, repack=True, n_gpu_layers=99,
                                 binary="llama-speculative"), "p")
    assert one[one.index("-c") + 1] == "512" and "--no-repack" not in one
    assert one[-4:] == ["-ngl", "99", "-ngld", "99"]


def test_the_simple_command_line_is_unchanged() -> None:
    cmd = build_command(PeerArgs("t.gguf", "d.gguf", n_max=3, p_min=0.75, n_predict=63,
                                 threads=2, ctx=1024, seed=3, binary="llama-speculative-simple"),
                        "p.txt")
    assert cmd == ["llama-speculative-simple", "-m", "t.gguf", "-md", "d.gguf", "--spec-type",
                   "draft-simple", "--spec-draft-n-max", "3", "--spec-draft-p-min", "0.75",
                   "-n", "63", "-t", "2", "-c", "1024", "--temp", "0.0", "-s", "3", "-f",
                   "p.txt", "--no-escape", "--no-repack"]


def test_the_tree_command_refuses_what_the_tree_example_ignores() -> None:
    with pytest.raises(ValueError, match="p_min"):
        build_command(PeerArgs("t", "d", n_parallel=2, p_min=0.5, binary="b"), "p")
    with pytest.raises(ValueError, match="n_min"):
        build_command(PeerArgs("t", "d", n_parallel=2, n_min=2, binary="b"), "p")
    with pytest.raises(ValueError, match="n_parallel"):
        build_command(PeerArgs("t", "d", n_parallel=0, binary="b"), "p")


def test_a_captured_tree_run_parses_into_the_peer_fields() -> None:
    res = parse_output(TREE_STDERR, TREE_STDOUT, PROMPT, tree=True)
    assert (res["n_prompt"], res["n_generated"], res["n_max"]) == (9, 32, 6)
    assert (res["prefill_s"], res["decode_s"]) == (0.001, 0.019)
    assert res["total_s"] == pytest.approx(0.020)
    assert res["tokens_per_s_incl_prefill"] == pytest.approx(32 / 0.020)
    assert (res["drafted"], res["accepted"]) == (66, 20)
    assert res["acceptance"] == pytest.approx(20 / 66)
    assert res["acceptance_reported_pct"] == pytest.approx(30.303)
    # 12 rounds of accepted tokens + 1; the first round's token came from the prefill's
    # logits, so 11 verification batches (6 draft steps each: 66 drafted)
    assert res["verify_rounds"] == 11
    assert res["tokens_per_round"] == pytest.approx(1 + 20 / 11)
    assert (res["target_prompt_eval_n"], res["target_eval_n"]) == (86, 1)
    assert "draft_prompt_eval_n" not in res  # nothing under "draft:" at the default log level
    assert res["text"] == TREE_TEXT
    # read as the simple example's output, every round is a verification batch
    assert parse_output(TREE_STDERR, TREE_STDOUT, PROMPT)["verify_rounds"] == 12


def test_the_draft_perf_lines_do_not_pass_for_the_target() -> None:
    res = parse_output(TREE_STDERR_LV4, "", tree=True)
    assert (res["draft_prompt_eval_n"], res["draft_eval_n"]) == (30, 55)
    assert res["draft_prompt_eval_ms"] == pytest.approx(10.75)
    assert (res["target_prompt_eval_n"], res["target_eval_n"]) == (86, 1)
    assert res["target_prompt_eval_ms"] == pytest.approx(0.92)
    assert res["text"] is None


def test_a_run_whose_decode_failed_is_an_error_not_a_result() -> None:
    with pytest.raises(PeerError, match="-kvu"):
        parse_output(BRANCHED_STDERR, TREE_STDOUT, PROMPT, tree=True)
    with pytest.raises(PeerError, match="decode: failed to initialize batch"):
        parse_output(TREE_STDERR + "0.00.050 E decode: failed to initialize batch\n", "")


def test_tree_specs_parse_and_bad_ones_say_the_form() -> None:
    assert peer.tree_spec(4, 0.1) == "llama.cpp-tree:4:0.1"
    assert peer.tree_spec(4, 0.25, 12) == "llama.cpp-tree:4:0.25:12"
    assert peer.parse_tree_spec("llama.cpp-tree:4:0.25:12") == (4, 0.25, 12)
    assert peer.parse_tree_spec("llama.cpp-tree:2:0.1") == (2, 0.1, peer.TREE_N_MAX)
    assert peer.TREE_N_MAX == 3
    for bad in ("llama.cpp-tree:4", "llama.cpp-tree:x:0.1", "llama.cpp-tree:4:0.1:8:1",
                "llama.cpp-tree:0:0.1", "llama.cpp-tree:4:1.5", "llama.cpp-tree:4:0.1:0"):
        with pytest.raises(InvalidRequestError, match="N_PARALLEL"):
            peer.parse_tree_spec(bad)
    assert peer.label("llama.cpp-tree:4:0.25:12") == "llama.cpp tree np=4 p_split=0.25 n_max=12"
    assert peer.label("llama.cpp:16:0.75") == "llama.cpp n_max=16 p_min=0.75"
    assert all(peer.handles(s) for s in ("llama.cpp:3:0", "llama.cpp-tree:4:0.1"))
    assert not any(peer.handles(s) for s in ("llama-cpp-python", "svip:0.3", "llama.cpp"))


def recording_runner(calls: list[dict[str, Any]]) -> SimpleNamespace:
    def run_peer(args: PeerArgs, prompt: str) -> dict[str, Any]:
        calls.append({"prompt": prompt, **asdict(args)})
        return {"n_generated": 33, "total_s": 2.0, "decode_s": 1.5, "prefill_s": 0.5,
                "drafted": 66, "accepted": 20, "verify_rounds": 12}

    return SimpleNamespace(run_peer=run_peer, default_binary=lambda: "unused")


def test_one_peer_runs_both_binaries_from_one_bin_dir(tmp_path: Path) -> None:
    simple, tree = tmp_path / "llama-speculative-simple", tmp_path / "llama-speculative"
    simple.write_text("")
    tree.write_text("")
    calls: list[dict[str, Any]] = []
    p = peer.Peer(tmp_path / "t.gguf", tmp_path / "d.gguf", threads=2, n_ctx=4096,
                  binary=simple, runner=recording_runner(calls),  # type: ignore[arg-type]
                  needs=peer.PREFIXES)
    item = BenchItem("specbench", "qa", Prompt("1", "qa", "Hi"), 32, False)
    assert p.handles("llama.cpp-tree:4:0.1:8") and p.handles("llama.cpp:3:0")
    rec = p.run(item, "llama.cpp-tree:4:0.1:8", 0.0, 5, 1)
    assert calls[0]["binary"] == tree
    assert {k: calls[0][k] for k in ("n_parallel", "p_split", "n_max", "n_predict", "ctx",
                                     "seed", "temp")} == {
        "n_parallel": 4, "p_split": 0.1, "n_max": 8, "n_predict": 32, "ctx": 4096, "seed": 5,
        "temp": 0.0}
    assert calls[0]["p_min"] == 0.0
    assert rec.policy == "llama.cpp-tree:4:0.1:8"
    assert rec.resolved == "llama.cpp tree np=4 p_split=0.1 n_max=8"
    assert (rec.generated, rec.wall_s, rec.prefill_s) == (33, 2.0, 0.5)
    assert (rec.drafted, rec.accepted, rec.rounds, rec.repeat) == (66, 20, 12, 1)
    p.run(item, "llama.cpp:3:0.5", 0.0, 0, 0)
    assert calls[1]["binary"] == simple and calls[1]["p_min"] == 0.5
    assert calls[1]["n_parallel"] is None


def test_a_missing_tree_binary_is_named_when_tree_specs_need_it(tmp_path: Path) -> None:
    (tmp_path / "llama-speculative-simple").write_text("")
    binary = tmp_path / "llama-speculative-simple"
    peer.Peer("t", "d", threads=1, n_ctx=64, binary=binary,
              runner=recording_runner([]))  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="llama-speculative not found"):
        peer.Peer("t", "d", threads=1, n_ctx=64, binary=binary, needs=(peer.TREE_PREFIX,),
                  runner=recording_runner([]))  # type: ignore[arg-type]


def test_the_default_tree_binary_sits_beside_the_simple_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMA_SPECULATIVE_SIMPLE", raising=False)
    monkeypatch.setenv("LLAMA_TOOLS_BIN_DIR", str(tmp_path))
    assert peer_runner.default_binary() == tmp_path / "llama-speculative-simple"
    assert peer_runner.default_binary(tree=True) == tmp_path / "llama-speculative"
    monkeypatch.setenv("LLAMA_SPECULATIVE_SIMPLE", str(tmp_path / "x" / "spec-simple"))
    assert peer_runner.default_binary(tree=True) == tmp_path / "x" / "llama-speculative"


def test_tree_specs_in_the_policies_run_on_the_peer_without_the_sweep(
        tiny_target: Path, tiny_draft_noisy: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from svip_local.bench.suite import BenchOptions, run_bench
    from svip_local.engine import Engine

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(peer, "peer_runner", recording_runner(calls))
    (tmp_path / "llama-speculative").write_text("")  # the simple binary is not needed here
    opts = BenchOptions([Prompt("1", "qa", "Where is the quick brown fox?")], max_tokens=8,
                        lengths=(), temperatures=(0.0,), calibrate=False, progress=False,
                        policies=("constant:2", "llama.cpp-tree:2:0.5:4"),
                        peer_binary=str(tmp_path / "llama-speculative-simple"))
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1, policy="none") as eng:
        result = run_bench(eng, opts)
    assert result.policies == ["none", "constant:2", "llama.cpp-tree:2:0.5:4"]
    assert [c["binary"].name for c in calls] == ["llama-speculative"]
    assert (calls[0]["n_parallel"], calls[0]["p_split"], calls[0]["n_max"]) == (2, 0.5, 4)
    tree_runs = [r for r in result.records if r.policy == "llama.cpp-tree:2:0.5:4"]
    assert len(tree_runs) == 1 and tree_runs[0].finish == "peer"
    assert not result.peer_sweep


def test_a_run_that_lost_its_report_runs_again(tmp_path: Path) -> None:
    """llama.cpp's log thread may not flush before the process exits (status 0, no report)."""
    (tmp_path / "out.txt").write_text(TREE_STDOUT)
    (tmp_path / "err.txt").write_text(TREE_STDERR)
    fake = tmp_path / "llama-speculative"
    fake.write_text(f"""#!/bin/sh
echo run >> {tmp_path}/runs
[ "$(wc -l < {tmp_path}/runs)" -ge 2 ] || exit 0
cat {tmp_path}/out.txt; cat {tmp_path}/err.txt >&2
""")
    fake.chmod(0o755)
    for model in ("t.gguf", "d.gguf"):
        (tmp_path / model).write_bytes(b"")
    res = peer_runner.run_peer(PeerArgs(tmp_path / "t.gguf", tmp_path / "d.gguf", n_max=6,
                                        n_predict=32, n_parallel=3, binary=fake), PROMPT)
    assert (tmp_path / "runs").read_text().count("run") == 2
    assert (res["n_generated"], res["verify_rounds"], res["text"]) == (32, 11, TREE_TEXT)
    (tmp_path / "runs").unlink()
    with pytest.raises(PeerError, match="no 'decoded N tokens"):
        peer_runner.run_peer(PeerArgs(tmp_path / "t.gguf", tmp_path / "d.gguf", n_parallel=3,
                                      binary=fake), PROMPT, attempts=1)


BUILT = peer_runner.default_binary(tree=True)


@pytest.mark.skipif(not BUILT.is_file(), reason="llama-speculative not built "
                    "(scripts/build_llama_tools.sh)")
def test_the_built_tree_binary_takes_the_command_and_its_output_parses(
        tiny_target: Path, tiny_draft_noisy: Path) -> None:
    args = PeerArgs(tiny_target, tiny_draft_noisy, n_max=6, n_predict=24, threads=1, ctx=256,
                    n_parallel=2, p_split=0.5)
    res = peer_runner.run_peer(args, PROMPT, attempts=5)  # may outpace the log thread
    assert res["cmd"][0] == str(BUILT) and res["returncode"] == 0
    assert 24 <= res["n_generated"] <= 24 + 6 and res["n_max"] == 6
    assert res["verify_rounds"] == res["n_generated"] - res["accepted"] - 1
    assert res["drafted"] == 6 * res["verify_rounds"]  # greedy: one unbranched chain of 6
    assert res["text"] is not None and res["prefill_s"] is not None
    assert (res["n_parallel"], res["p_split"]) == (2, 0.5)


@pytest.mark.skipif(not BUILT.is_file(), reason="llama-speculative not built "
                    "(scripts/build_llama_tools.sh)")
def test_a_sampled_branching_tree_fails_loudly_in_this_llama_cpp(
        tiny_target: Path, tiny_draft_noisy: Path) -> None:
    """The tree example's branches need -kvu, which it does not take (docs/peers.md): it
    aborts, or finishes with failed decodes (the message may have lost the log's lines)."""
    with pytest.raises(PeerError):
        peer_runner.run_peer(PeerArgs(tiny_target, tiny_draft_noisy, n_max=6, n_predict=24,
                                      threads=1, ctx=256, temp=1.0, n_parallel=3,
                                      p_split=0.05), PROMPT)
