"""`svip-local list | pull | rm | path`, through the real dispatcher, against a fake hub."""

from __future__ import annotations

import json
import logging

import pytest

from svip_local.cli import main
from tests.support.registry_fakes import random_bytes, serve_pair

TARGET = random_bytes(20_000, seed=7)
DRAFT = random_bytes(8_000, seed=8)


@pytest.fixture
def hub(dirs, hub):
    """conftest's hub, serving the pair "fake" (checked against the hub's own sha256)."""
    serve_pair(dirs, hub, "fake", TARGET, DRAFT, repo="org/target-GGUF", checked=False)
    return hub


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_pull_then_path_print_the_verified_files(hub, capsys):
    code, out, _ = run(capsys, "pull", "fake", "--json")
    assert code == 0
    pulled = json.loads(out)
    assert pulled["settings"] == {"n_ctx": 512, "policy": "auto", "chat_template": "gguf"}
    code, out, _ = run(capsys, "path", "fake", "--json")
    assert code == 0
    assert json.loads(out) == {"target": pulled["target"], "draft": pulled["draft"]}
    with open(pulled["target"], "rb") as f:
        assert f.read() == TARGET


def test_list_tells_the_truth(hub, capsys):
    run(capsys, "pull", "fake")
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0
    entries = {entry["name"]: entry for entry in json.loads(out)}
    assert entries["fake"]["downloaded"] and entries["fake"]["verified"]
    assert entries["fake"]["target"]["size"] == len(TARGET)
    reference = entries["qwen2.5-coder-1.5b"]
    assert not reference["downloaded"] and reference["target"]["size"] == 1_117_320_768
    code, out, _ = run(capsys, "list")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert rows["fake"][5:7] == ["yes", "yes"]  # name, two sizes of two words, then the state
    assert rows["qwen2.5-coder-1.5b"][5:7] == ["no", "-"]


def test_rm_then_path_gives_the_pull_command(hub, capsys):
    run(capsys, "pull", "fake")
    code, out, _ = run(capsys, "rm", "fake")
    assert code == 0 and out.count("removed ") >= 2
    code, out, err = run(capsys, "path", "fake")
    assert code == 1 and out == ""
    assert "Run: svip-local pull fake" in err


def test_unknown_name_is_a_clean_error(hub, capsys):
    code, _, err = run(capsys, "pull", "nope")
    assert code == 1
    assert err.startswith("svip-local: error: unknown model 'nope'.") and "fake" in err


def test_bad_user_entry_is_reported_with_entry_and_field(hub, capsys, caplog, tmp_path):
    (tmp_path / "config" / "models.toml").write_text('[pairs.x]\nverified = "yes"\n')
    with caplog.at_level(logging.WARNING):
        code, out, _ = run(capsys, "list")
    assert code == 0 and "qwen2.5-coder-1.5b" in out  # the shipped pairs stay usable
    assert "models.toml: pairs.x.verified: must be a boolean, not a string" in caplog.text
