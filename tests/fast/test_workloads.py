"""The benchmark's chat workloads: the packaged code-edit conversations, and the disjoint
calibration set kept for fitting, are well formed, paste code and ask for an edit that repeats
it, fit the context the benchmark gives them, and a bad row in a workload file is reported by
file, line and problem."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from svip_local.bench.prompts import Prompt
from svip_local.bench.suite import BenchOptions, bench_items
from svip_local.bench.workloads import (
    CALIBRATION_WORKLOADS,
    WORKLOADS,
    ChatPrompt,
    load_workload,
    parse_conversations,
)
from svip_local.chat import ChatTemplate
from svip_local.errors import InvalidRequestError

CATEGORIES = ("rename", "fix", "docstring", "port")
CHATML = ChatTemplate(source="test", builtin="chatml")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
# Budget: Qwen's BPE spends ~3.1-4.7 characters a token on this data (measured with the Qwen2
# vocabulary); 3.0 over-counts. A GGUF template that adds its default system prompt when the
# conversation has none costs ~25 tokens more.
CHARS_PER_TOKEN = 3.0
DEFAULT_SYSTEM_TOKENS = 40
N_CTX, REPLY_TOKENS = 4096, 512
PEER_BATCH = 2048  # llama-speculative-simple refuses a prompt longer than its -b (2048)

CODE_EDIT = load_workload("code-edit")
CALIBRATION = load_workload("code-edit-calibration")
EVERY_PROMPT = CODE_EDIT + CALIBRATION


def row(id: str = "a", category: str = "fix", **fields: object) -> str:
    messages = fields.pop("messages", [{"role": "user", "content": "Fix `f`."}])
    return json.dumps({"id": id, "category": category, "messages": messages, **fields})


def fences(prompt: ChatPrompt) -> list[tuple[str, str]]:
    return [(lang, code) for m in prompt.messages for lang, code in FENCE.findall(m["content"])]


@pytest.mark.parametrize("prompts", [CODE_EDIT, CALIBRATION], ids=["code-edit", "calibration"])
def test_a_code_edit_set_has_enough_conversations_of_every_kind(
        prompts: list[ChatPrompt]) -> None:
    assert len(prompts) >= 12
    counts = Counter(p.category for p in prompts)
    assert set(counts) == set(CATEGORIES)
    assert min(counts.values()) >= 3, counts
    multi_turn = [p.id for p in prompts if any(m["role"] == "assistant" for m in p.messages)]
    assert len(multi_turn) >= 4, multi_turn
    assert len({p.id for p in prompts}) == len(prompts)
    # Users paste more than Python.
    languages = Counter(lang for p in prompts for lang, _ in fences(p)[:1])
    assert languages["python"] >= len(prompts) // 2
    assert len(languages) >= 4, languages
    assert sum(n for lang, n in languages.items() if lang != "python") >= 4, languages


def test_the_calibration_set_is_loadable_but_not_benchmarked_and_shares_nothing() -> None:
    assert "code-edit" in WORKLOADS
    assert "code-edit-calibration" in CALIBRATION_WORKLOADS
    assert not set(WORKLOADS) & set(CALIBRATION_WORKLOADS)
    assert not {p.id for p in CODE_EDIT} & {p.id for p in CALIBRATION}
    # No code block of one set, pasted or answered, appears in the other, even reindented.
    def codes(prompts: list[ChatPrompt]) -> set[str]:
        return {"\n".join(line.strip() for line in code.strip().splitlines())
                for p in prompts for _, code in fences(p)}
    shared = codes(CODE_EDIT) & codes(CALIBRATION)
    assert not shared, f"{len(shared)} code block(s) in both sets"


@pytest.mark.parametrize("prompt", EVERY_PROMPT, ids=lambda p: p.id)
def test_each_conversation_pastes_code_and_asks_for_an_edit_of_it(prompt: ChatPrompt) -> None:
    text = CHATML.render(prompt.messages)
    assert text.endswith("<|im_start|>assistant\n")
    assert all(m["content"] in text for m in prompt.messages)
    blocks = fences(prompt)
    assert blocks, "no fenced code block"
    lang, pasted = blocks[0]
    assert lang, "the pasted block names no language"
    assert 25 <= pasted.count("\n") <= 90 and 800 <= len(pasted) <= 3000, (
        f"pasted code of {pasted.count(chr(10))} lines, {len(pasted)} characters")
    for m in prompt.messages:
        assert m["content"].count("```") % 2 == 0, "a fence is left open"
        if m["role"] == "assistant":  # earlier replies give the full code, as asked
            assert FENCE.search(m["content"]), "an earlier reply without its code"
    last = prompt.messages[-1]
    assert last["role"] == "user"
    named = INLINE.findall(last["content"])
    assert FENCE.search(last["content"]) or any(
        name in code for name in named for _, code in blocks), (
        f"the last message {last['content'][:60]!r}... names nothing in the pasted code")


@pytest.mark.parametrize("prompt", EVERY_PROMPT, ids=lambda p: p.id)
def test_each_conversation_fits_the_context_with_its_reply(prompt: ChatPrompt) -> None:
    tokens = len(CHATML.render(prompt.messages)) / CHARS_PER_TOKEN + DEFAULT_SYSTEM_TOKENS
    assert tokens + REPLY_TOKENS <= N_CTX
    assert tokens <= PEER_BATCH - 48, f"~{tokens:.0f} tokens"


def test_parsed_rows_keep_their_messages_and_skip_blank_lines() -> None:
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "```py\nx = 1\n```"},
            {"role": "assistant", "content": "Done."},
            {"role": "user", "content": "Rename `x`."}]
    prompts = parse_conversations([row("a", messages=msgs), "", "  ", row("b", "port")],
                                  origin="conv.jsonl")
    assert prompts == [ChatPrompt("a", "fix", tuple(msgs)),
                       ChatPrompt("b", "port", ({"role": "user", "content": "Fix `f`."},))]


BAD_ROWS = [
    ('{"id": "b", "category": "fix", "messages": [', "not JSON"),
    ('["b", "fix"]', "expected a JSON object, got a list"),
    (row("b", messages=None).replace(', "messages": null', ""), "missing field.* messages"),
    (row("b", note="x"), "unknown field.* note"),
    (row("", "fix"), "id must be a non-empty string"),
    (row("b", ""), "category must be a non-empty string"),
    (row("b", messages=[]), "messages must be a non-empty list"),
    (row("b", messages=["hi"]), "message 0: expected an object, got a string"),
    (row("b", messages=[{"role": "tool", "content": "x"}]), "message 0: role 'tool' is not"),
    (row("b", messages=[{"role": "user", "content": "  "}]), "message 0: content must be non-"),
    (row("b", messages=[{"role": "user", "content": 3}]), "message 0: content must be non-"),
    (row("b", messages=[{"role": "user", "text": "x"}]), "message 0: needs exactly the fields"),
    (row("b", messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]),
     "the last message must be the user's, not 'assistant'"),
    (row("b", messages=[{"role": "user", "content": "x"}, {"role": "system", "content": "y"},
                        {"role": "user", "content": "z"}]),
     "message 1 is 'system' where 'assistant' was expected"),
    (row("b", messages=[{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]),
     "message 1 is 'user' where 'assistant' was expected"),
    (row("a"), "duplicate id 'a' \\(first used on line 1\\)"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_ROWS, ids=[p for _, p in BAD_ROWS])
def test_a_bad_row_is_reported_with_its_line_and_problem(line: str, problem: str) -> None:
    with pytest.raises(InvalidRequestError, match=f"^conv.jsonl:3: .*{problem}"):
        parse_conversations([row("a"), "", line, row("c")], origin="conv.jsonl")


def test_a_file_without_conversations_and_an_unknown_workload_are_errors() -> None:
    with pytest.raises(InvalidRequestError, match="^empty.jsonl: no conversations"):
        parse_conversations(["", "\n"], origin="empty.jsonl")
    with pytest.raises(InvalidRequestError,
                       match="unknown workload 'code_edit'.*code-edit, code-edit-calibration"):
        load_workload("code_edit")


def test_the_workload_files_ship_in_the_wheel() -> None:
    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))[
        "tool"]["setuptools"]["package-data"]["svip_local"]
    data = sorted((root / "svip_local").glob("bench/workloads/*.jsonl"))
    assert data
    for path in data:
        name = path.relative_to(root / "svip_local").as_posix()
        assert any(fnmatch.fnmatch(name, p) for p in patterns), f"{name} not in package-data"


def test_a_bench_takes_the_first_conversations_of_each_kind_when_asked() -> None:
    prompts = [Prompt(c.id, c.category, CHATML.render(c.messages), c.messages)
               for c in CODE_EDIT]
    opts = BenchOptions(prompts=[], prompts_source="none", workloads=("code-edit",))
    every = bench_items(opts, {"code-edit": prompts})
    two = bench_items(dataclasses.replace(opts, chat_per_category=2), {"code-edit": prompts})
    assert [i.prompt.id for i in every] == [c.id for c in CODE_EDIT]
    assert Counter(i.group for i in two) == {c: 2 for c in CATEGORIES}
    assert [i.prompt.id for i in two] == [
        p.id for cat in CATEGORIES for p in [q for q in prompts if q.category == cat][:2]]
