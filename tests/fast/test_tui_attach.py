"""`/attach PATH` lines: files become fenced code blocks in the message; files that cannot
be attached give an error naming the file and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from tui.attach import LIMIT_BYTES, AttachError, expand, has_attachments

CODE = "def add(a, b):\n    return a + b\n"


def test_attach_lines_become_fenced_blocks_named_after_the_file(tmp_path: Path) -> None:
    (tmp_path / "add.py").write_text(CODE)
    (tmp_path / "my notes").write_bytes(b"\xef\xbb\xbfline one\r\nline two\r\n")  # BOM, CRLF
    text = 'Why does this fail?\n/attach add.py\n  /attach "my notes"  \nThanks.'
    assert has_attachments(text)
    expanded, names = expand(text, cwd=tmp_path)
    assert names == ["add.py", "my notes"]
    assert expanded == ("Why does this fail?\n"
                        "`add.py`:\n```py\ndef add(a, b):\n    return a + b\n```\n"
                        "`my notes`:\n```\nline one\nline two\n```\n"
                        "Thanks.")


def test_a_file_with_fences_inside_gets_a_longer_fence(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("Run:\n```sh\nmake\n```\n")
    expanded, _ = expand("/attach README.md", cwd=tmp_path)
    assert expanded == "`README.md`:\n````md\nRun:\n```sh\nmake\n```\n````"


def test_the_home_directory_and_absolute_paths(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "add.py").write_text(CODE)
    assert expand("/attach ~/add.py", cwd=Path("/nonexistent"))[1] == ["~/add.py"]
    assert expand(f"/attach {tmp_path / 'add.py'}", cwd=Path("/"))[0].endswith(
        "return a + b\n```")


@pytest.mark.parametrize("text", [
    "no command here", "/attachment x", "see /attach x.py", "/Attach x.py", "",
])
def test_other_lines_are_left_alone(text: str) -> None:
    assert not has_attachments(text)
    assert expand(text, cwd=Path("/nonexistent")) == (text, [])


@pytest.mark.parametrize("name, make, error", [
    ("missing.py", None, "cannot attach missing.py: no such file"),
    ("src", lambda p: p.mkdir(), "cannot attach src: it is a directory"),
    ("logo.png", lambda p: p.write_bytes(b"\x89PNG\r\n"),
     "cannot attach logo.png: not UTF-8 text (byte 0x89 at offset 0)"),
    ("big.txt", lambda p: p.write_text("x" * (LIMIT_BYTES + 1)),
     f"cannot attach big.txt: {LIMIT_BYTES + 1:,} bytes, over the limit of {LIMIT_BYTES:,}"),
    ("", None, "/attach needs a file: /attach PATH"),
])
def test_files_that_cannot_be_attached_are_named_with_the_reason(tmp_path: Path, name: str,
                                                                  make: object,
                                                                  error: str) -> None:
    if callable(make):
        make(tmp_path / name)
    with pytest.raises(AttachError) as caught:
        expand(f"look:\n/attach {name}", cwd=tmp_path)
    assert str(caught.value) == error


def test_a_file_at_the_limit_is_attached(tmp_path: Path) -> None:
    (tmp_path / "full.txt").write_text("y" * LIMIT_BYTES)
    assert expand("/attach full.txt", cwd=tmp_path)[0].count("y") == LIMIT_BYTES
