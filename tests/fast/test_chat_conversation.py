"""Conversation state: regenerate/edit, prompts for stream_chat, origin runs, JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from svip_local.conversation import (
    Conversation,
    ConversationFileError,
    conversations_dir,
    list_saved,
    origin_runs,
)
from svip_local.errors import InvalidRequestError


def chat(*turns: str) -> Conversation:
    conv = Conversation(system_prompt="Be brief.")
    for i, text in enumerate(turns):
        if i % 2 == 0:
            conv.add_user(text)
        else:
            conv.add_reply(text, ((len(text), True),), "eos")
    return conv


def test_prompt_puts_the_system_prompt_first() -> None:
    assert chat("Hi", "Hello").prompt() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert Conversation().prompt() == []


def test_regenerate_drops_only_the_last_reply() -> None:
    conv = chat("Hi", "Hello", "Bye", "Ciao")
    conv.regenerate()
    assert [m.content for m in conv.messages] == ["Hi", "Hello", "Bye"]
    with pytest.raises(InvalidRequestError, match="no reply to regenerate"):
        conv.regenerate()


def test_edit_replaces_the_last_question_and_its_replies() -> None:
    conv = chat("Hi", "Hello", "Bye", "Ciao")
    assert conv.last_user_text() == "Bye"
    conv.edit_last_user("See you")
    assert [m.content for m in conv.messages] == ["Hi", "Hello", "See you"]
    with pytest.raises(InvalidRequestError, match="no message to edit"):
        Conversation().edit_last_user("x")


def test_title_is_the_first_question_on_one_line() -> None:
    assert chat("How do\n  I sort   a list?").title == "How do I sort a list?"
    assert len(chat("word " * 40).title) == 60
    assert Conversation().title == "(empty)"


@pytest.mark.parametrize("pieces, total, runs", [
    ([("ab", True), ("c", True), ("d", False)], 4, ((3, True), (1, False))),
    ([("ab", True), ("", False), ("cd", True)], 4, ((4, True),)),
    ([("ab", True)], 5, ((2, True), (3, False))),  # a flushed tail is the target's
    ([("ab", True), ("cd", False)], 3, ((2, True), (1, False))),  # a stop string cut it
])
def test_origin_runs(pieces: list, total: int, runs: tuple) -> None:
    assert origin_runs(pieces, total) == runs


def test_save_and_load_round_trip() -> None:
    conv = chat("Hi", "Hello")
    path = conv.save()
    assert path.parent == conversations_dir() and path.name == f"{conv.id}.json"
    loaded = Conversation.load(path)
    assert loaded == conv
    assert loaded.messages[1].origin == ((5, True),)
    assert loaded.messages[1].finish_reason == "eos"


def test_list_saved_is_newest_first_and_skips_bad_files(tmp_path: Path) -> None:
    older, newer = chat("first"), chat("second")
    for conv, when in ((older, "2024-01-01T10:00:00"), (newer, "2024-02-01T10:00:00")):
        path = conv.save(tmp_path)
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "updated": when}))
    (tmp_path / "broken.json").write_text("{not json")
    saved = list_saved(tmp_path)
    assert [s.title for s in saved] == ["second", "first"]
    assert saved[0].n_messages == 1
    assert list_saved(tmp_path / "missing") == []


@pytest.mark.parametrize("content, error", [
    ("{not json", "cannot read conversation"),
    ('{"format": 99, "messages": []}', "unknown conversation format 99"),
    ('{"format": 1}', "cannot read conversation"),
])
def test_unreadable_files_raise_a_clear_error(tmp_path: Path, content: str, error: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(ConversationFileError, match=error):
        Conversation.load(path)
