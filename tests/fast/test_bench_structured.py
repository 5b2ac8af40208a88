"""The structured-output benchmark: its packaged task set (every schema a valid JSON Schema
that the engine compiles, every regex compiled), the validity checker, the cost model's
pricing of measured rounds, and `svip-local bench --structured` on tiny models writing its
JSON and table."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from svip_local import Constraint
from svip_local.bench.structured_check import is_valid, problem
from svip_local.bench.structured_peers import llama_record
from svip_local.bench.structured_predict import RoundLog, predict_seconds
from svip_local.bench.structured_records import parse_contestant
from svip_local.bench.structured_tasks import (
    KINDS,
    StructuredTask,
    load_tasks,
    parse_tasks,
    select_tasks,
)
from svip_local.calibration import CostModel
from svip_local.cli import main
from svip_local.errors import InvalidRequestError
from svip_local.sampling import SamplingParams

TASKS = load_tasks()
USER = [{"role": "user", "content": "Answer."}]
FLAG = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
        "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIMER = {"type": "function", "function": {"name": "set_timer", "parameters": {
    "type": "object", "properties": {"minutes": {"type": "integer"}},
    "required": ["minutes"]}}}
TOOL_TASK = StructuredTask("t", "tool", tuple(USER), tools=(WEATHER, TIMER))

pytestmark = pytest.mark.usefixtures("own_calibration_store")


def test_the_task_set_has_enough_tasks_of_every_kind() -> None:
    assert len(TASKS) >= 24
    counts = Counter(t.kind for t in TASKS)
    assert all(counts[k] >= 6 for k in KINDS), counts
    tools = [t for t in TASKS if t.kind == "tool"]
    assert all(3 <= len(t.tools) <= 5 for t in tools)
    choices = Counter(t.tool_choice for t in tools)
    assert choices["required"] >= len(tools) // 2 and choices["auto"] >= len(tools) // 2


@pytest.mark.parametrize("task", TASKS, ids=[t.id for t in TASKS])
def test_every_task_compiles_with_the_engine_s_constraint(task: StructuredTask) -> None:
    if task.schema is not None:
        jsonschema.validators.validator_for(task.schema).check_schema(task.schema)
        assert Constraint.json_schema(task.schema).kind == "json_schema"
    if task.regex is not None:
        assert Constraint.regex(task.regex).kind == "regex"
    for tool in task.tools:
        params = tool["function"]["parameters"]
        jsonschema.validators.validator_for(params).check_schema(params)
        Constraint.json_schema(params)
    peer = task.peer_schema()  # what the JSON-Schema-only peers are held to
    if task.kind == "regex":
        assert peer is None
    else:
        assert peer is not None
        jsonschema.validators.validator_for(peer).check_schema(peer)
        Constraint.json_schema(peer)


@pytest.mark.parametrize("line, message", [
    ('{"id": "a", "kind": "poem", "messages": []}', "kind must be one of"),
    ('{"id": "a", "kind": "regex", "messages": [{"role": "user", "content": "x"}]}',
     "a regex task needs regex"),
    ('{"id": "a", "kind": "extract", "messages": [{"role": "user", "content": "x"}], '
     '"schema": {}, "regex": "x"}', "and no regex"),
    ('{"id": "a", "kind": "regex", "messages": [{"role": "assistant", "content": "x"}], '
     '"regex": "x"}', "the last message must be the user's"),
    ('{"id": "a", "kind": "regex", "messages": [], "regex": "x", "extra": 1}',
     "unknown field(s) extra"),
    ("not json", "not JSON"),
])
def test_a_bad_task_row_is_named_by_line(line: str, message: str) -> None:
    with pytest.raises(InvalidRequestError, match="tasks.jsonl:2: ") as exc:
        parse_tasks(["", line], origin="tasks.jsonl")
    assert message in str(exc.value)


def test_select_takes_the_first_of_each_kind() -> None:
    chosen = select_tasks(TASKS, kinds=("regex", "tool"), per_kind=2)
    assert [t.kind for t in chosen] == ["tool", "tool", "regex", "regex"]
    with pytest.raises(InvalidRequestError, match="unknown task kind"):
        select_tasks(TASKS, kinds=("poem",))


@pytest.mark.parametrize("task, text, calls, wrong", [
    (StructuredTask("s", "extract", tuple(USER), schema=FLAG), '{"ok": true}', None, ""),
    (StructuredTask("s", "extract", tuple(USER), schema=FLAG), '{"ok": 1}', None, "schema:"),
    (StructuredTask("s", "extract", tuple(USER), schema=FLAG), '{"ok": tr', None, "not JSON"),
    (StructuredTask("s", "extract", tuple(USER), schema=FLAG), '{}', None, "required"),
    (StructuredTask("r", "regex", tuple(USER), regex="[0-9]{4}"), "2025", None, ""),
    (StructuredTask("r", "regex", tuple(USER), regex="[0-9]{4}"), "20251", None, "match"),
    (TOOL_TASK, "", [("get_weather", '{"city": "Oslo"}')], ""),
    (TOOL_TASK, "", [("get_weather", '{"town": "Oslo"}')], "get_weather: schema"),
    (TOOL_TASK, "", [("get_time", "{}")], "not one of the tools"),
    (TOOL_TASK, "Sure!", [], "no tool call"),
    (TOOL_TASK, '{"name": "set_timer", "arguments": {"minutes": 5}}', None, ""),
    (TOOL_TASK, '<tool_call>\n{"name": "set_timer", "arguments": {"minutes": 5}}\n</tool_call>',
     None, ""),
    (TOOL_TASK, '{"name": "set_timer", "arguments": {"minutes": "5"}}', None, "set_timer"),
])
def test_the_validity_checker(task: StructuredTask, text: str,
                              calls: list[tuple[str, str]] | None, wrong: str) -> None:
    found = problem(task, text, calls)
    assert is_valid(task, text, calls) == (not wrong)
    assert wrong in found if wrong else found == ""


def test_contestants_parse_and_refuse_unknown_aids() -> None:
    assert parse_contestant("auto/no-mask").aids == "no-mask"
    assert parse_contestant("svip:0.3").constrained
    assert not parse_contestant("none/free").constrained
    assert parse_contestant("llama.cpp:4:0").peer
    with pytest.raises(InvalidRequestError, match="unknown /loose"):
        parse_contestant("auto/loose")
    with pytest.raises(InvalidRequestError, match="takes no /bare"):
        parse_contestant("llama-cpp-python/bare")
    with pytest.raises(InvalidRequestError, match="unknown policy"):
        parse_contestant("fastest")


def costs() -> CostModel:
    return CostModel(verify_s=(0.10, 0.12, 0.14, 0.16, 0.18), draft_s=(0.02, 0.03),
                     argmax_s=0.001, entropy_s=0.0, target_prefill_s=(0.0, 0.01, 0.0),
                     draft_prefill_s=(0.0, 0.002, 0.0), target_depth_s=0.0,
                     draft_depth_s=0.0, base_depth=0)


def test_rounds_are_priced_with_the_cost_model() -> None:
    # The target alone: prefill of 9 tokens, then 3 one-row verifications, each row read.
    alone = [RoundLog(0, 0, 0, False, forced=0, steps=0, catchup=0)] * 3
    assert predict_seconds(alone, prompt_tokens=10, generated=3, mask_s=0.5,
                           costs=costs()) == pytest.approx(0.09 + 3 * 0.101 + 0.5)
    # Two forced tokens accepted with one more: one 3-row verification, no draft step.
    forced = [RoundLog(2, 2, 2, False, forced=2, steps=0, catchup=0)]
    assert predict_seconds(forced, prompt_tokens=10, generated=3, mask_s=0,
                           costs=costs()) == pytest.approx(0.09 + 0.14 + 3 * 0.001)
    # A drafted round after one forced token pays the draft's catch-up of the prompt and
    # the forced token (11 tokens), then its two steps.
    drafted = [RoundLog(3, 3, 3, False, forced=1, steps=2, catchup=11)]
    a = predict_seconds(drafted, prompt_tokens=10, generated=4, mask_s=0, costs=costs())
    assert a == pytest.approx(0.09 + 0.16 + 4 * 0.001 + 11 * 0.002 + 2 * 0.001 + 0.02)


def test_llama_cpp_s_count_loses_its_end_token() -> None:
    from svip_local.bench.structured_records import Contestant, PreparedTask

    task = StructuredTask("s", "extract", tuple(USER), schema=FLAG)
    prep = PreparedTask(task, "prompt", [1, 2, 3], [], None)
    c = Contestant("llama.cpp:4:0", "llama.cpp:4:0")
    res = {"n_generated": 6, "total_s": 2.0, "decode_s": 1.5, "prefill_s": 0.5,
           "drafted": 8, "accepted": 4, "verify_rounds": 2, "text": '{"ok": false}'}
    rec = llama_record(prep, c, 0.0, 0, res, max_tokens=32)
    assert (rec.generated, rec.finish, rec.valid, rec.wall_s) == (5, "stop", True, 2.0)
    cut = llama_record(prep, c, 0.0, 0, {**res, "n_generated": 32, "text": '{"ok'}, 32)
    assert (cut.generated, cut.finish, cut.valid) == (32, "length", False)


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    rows = [{"id": "flag", "kind": "extract", "schema": FLAG, "messages": [
                {"role": "user", "content": "Is the quick brown fox quick? Answer as JSON."}]},
            {"id": "year", "kind": "regex", "regex": "[0-9]{4}", "messages": [
                {"role": "user", "content": "In what year was the fox born?"}]}]
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bench_structured_writes_json_and_table(tiny_target: Path, tiny_draft_noisy: Path,
                                                task_file: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["bench", "--structured", "--target", str(tiny_target), "--draft",
                 str(tiny_draft_noisy), "--threads", "1", "--n-ctx", "512", "--tasks",
                 str(task_file), "--policies", "none/bare,constant:2", "--max-tokens", "24",
                 "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"structured.json", "structured.md"}
    data = json.loads((out / "structured.json").read_text())
    # The unconstrained target alone always runs beside the constrained one.
    assert data["contestants"] == ["none/free", "none/bare", "constant:2"]
    assert len(data["records"]) == 2 * 3
    constrained = [r for r in data["records"] if r["constrained"]]
    assert all(r["finish"] == "stop" and r["valid"] for r in constrained)
    # Greedy and lossless: every constrained contestant wrote the same reply.
    for task in ("flag", "year"):
        assert len({r["text"] for r in constrained if r["task_id"] == task}) == 1
    overall = {s["contestant"]: s for s in data["summaries"] if s["group"] == "all"}
    assert overall["none/bare"]["speedup"] == pytest.approx(1.0)
    assert overall["constant:2"]["valid_rate"] == 1.0
    assert overall["constant:2"]["forced_share"] > 0  # `{"ok": ` is forced
    report = (out / "structured.md").read_text()
    assert "target alone, constrained" in report and "constant k=2" in report
    assert "No calibration" in report  # no predicted column without one
    printed = capsys.readouterr().out
    assert "structured output, greedy" in printed and "target alone, free text" in printed


ENUM_TOOLS = (
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"],
        "additionalProperties": False}}},
    {"type": "function", "function": {"name": "set_timer", "parameters": {
        "type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"],
        "additionalProperties": False}}})


@pytest.mark.parametrize("task", [
    StructuredTask("flag", "extract", ({"role": "user", "content": "Is the fox quick?"},),
                   schema=FLAG),
    StructuredTask("call", "tool", ({"role": "user", "content": "The weather, please."},),
                   tools=ENUM_TOOLS, tool_choice="required"),
], ids=["schema", "tool"])
def test_the_bench_runs_what_stream_chat_runs(tiny_target: Path, tiny_draft_noisy: Path,
                                              task: StructuredTask) -> None:
    """The prompt the bench renders once for every contestant is stream_chat's, and its
    engine runs (any aids) reply as stream_chat does."""
    from svip_local import Engine
    from svip_local.bench.structured_engine import prepare, run_engine
    from svip_local.chat import ChatTemplate, stream_chat
    from svip_local.events import Done

    with Engine(tiny_target, tiny_draft_noisy, n_ctx=2048, n_threads=1) as engine:
        template = ChatTemplate.for_engine(engine)
        prep = prepare(engine, template, task)
        engine.reset()
        done = [e for e in stream_chat(engine, list(task.messages), max_tokens=128,
                                       policy="none", tools=list(task.tools) or None,
                                       tool_choice=task.tool_choice,
                                       response_format=task.response_format)
                if isinstance(e, Done)][0]
        assert done.stats.prompt_tokens == len(prep.ids)
        want = json.dumps({"content": done.text, "tool_calls": [
            [c.name, c.arguments] for c in done.tool_calls]}) if task.tools else done.text
        assert is_valid(task, done.text, [(c.name, c.arguments) for c in done.tool_calls]
                        if task.tools else None)
        for name in ("none/bare", "constant:3", "auto/no-mask", "lookup/bare"):
            c = parse_contestant(name)
            rec = run_engine(engine, prep, c, engine.make_policy(c.spec), SamplingParams(), 0,
                             128, costs())
            assert (rec.text, rec.finish, rec.valid) == (want, done.finish_reason, True)
            assert rec.predicted_s is not None and rec.predicted_s > 0  # its rounds priced


def test_bench_structured_sweeps_llama_cpp_with_the_task_schema(
        tiny_target: Path, tiny_draft_noisy: Path, task_file: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from svip_local.bench import peer
    from tests.support.peer import fake_runner

    calls: list[dict] = []
    monkeypatch.setattr(peer, "peer_runner", fake_runner(calls))
    binary = tmp_path / "llama-speculative-simple"
    binary.write_text("")
    out = tmp_path / "out"
    assert main(["bench", "--structured", "--target", str(tiny_target), "--draft",
                 str(tiny_draft_noisy), "--threads", "1", "--n-ctx", "512", "--tasks",
                 str(task_file), "--policies", "none/bare", "--max-tokens", "24", "--peer",
                 "--peer-binary", str(binary), "--peer-grid", "1:0,3:0",
                 "--peer-sweep-prompts", "1", "--out", str(out)]) == 0
    data = json.loads((out / "structured.json").read_text())
    # The fake is fastest at n_max 3; its best setting then runs on the one JSON task (the
    # regex task is skipped: the peer takes a JSON Schema only).
    assert [r["policy"] for r in data["peer_sweep"]] == ["llama.cpp:1:0", "llama.cpp:3:0"]
    assert data["contestants"] == ["none/free", "none/bare", "llama.cpp:3:0"]
    assert [r["task_id"] for r in data["records"] if r["contestant"] == "llama.cpp:3:0"] == [
        "flag"]
    assert len(calls) == 2 + 1
    assert all(c["extra_args"][-2:] == ("--json-schema", json.dumps(FLAG)) for c in calls)
    assert "skip the regex tasks" in (out / "structured.md").read_text()
