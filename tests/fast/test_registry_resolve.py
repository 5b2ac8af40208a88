"""resolve / status / remove: what the engine and TUI ask, answered truthfully and offline."""

from __future__ import annotations

import logging
import os

import pytest

from svip_local.errors import ModelNotDownloadedError
from svip_local.registry import load_registry, pull, remove, resolve, status
from tests.support.registry_fakes import (
    hf_source,
    pair_toml,
    random_bytes,
    sha256,
)

TARGET = random_bytes(30_000, seed=5)
DRAFT = random_bytes(10_000, seed=6)
TARGET_HF = hf_source("org/target-GGUF", "t.gguf", sha256(TARGET))
DRAFT_HF = hf_source("org/draft-GGUF", "d.gguf")
FAKE_PAIR = pair_toml("fake", ("t.gguf", [TARGET_HF]), ("d.gguf", [DRAFT_HF]))


@pytest.fixture
def hub(dirs, hub):
    """conftest's hub, serving the pair "fake"."""
    hub.add("org/target-GGUF", "t.gguf", TARGET)
    hub.add("org/draft-GGUF", "d.gguf", DRAFT)
    dirs.user_file.write_text(FAKE_PAIR)
    return hub


def test_not_downloaded_fails_with_the_command_to_run(hub):
    with pytest.raises(ModelNotDownloadedError, match="Run: svip-local pull fake$"):
        resolve("fake")
    with pytest.raises(ModelNotDownloadedError, match="Run: svip-local pull fake --source hf$"):
        resolve("fake", source="hf")
    assert hub.requests == []


def test_resolve_with_consent_pulls_and_returns_settings(hub):
    pair = resolve("fake", pull=True)
    assert pair.target.read_bytes() == TARGET and pair.draft.read_bytes() == DRAFT
    assert (pair.settings.n_ctx, pair.settings.policy) == (512, "auto")
    assert resolve("fake") == pair


def test_a_changed_file_is_rehashed_locally_before_use(hub):
    pair = pull("fake")
    os.utime(pair.target, ns=(1, 1))  # same bytes, new mtime: the marker no longer vouches
    st = status("fake")
    assert st.target.downloaded and not st.target.verified and st.draft.verified
    before = len(hub.requests)
    assert resolve("fake") == pair
    assert status("fake").verified
    assert len(hub.requests) == before


def test_a_corrupted_file_is_deleted_and_must_be_pulled_again(hub, caplog):
    pair = pull("fake")
    blob = pair.target.resolve()
    blob.write_bytes(bytes(len(TARGET)))  # same size, other bytes, new mtime
    with caplog.at_level(logging.WARNING), pytest.raises(ModelNotDownloadedError):
        resolve("fake")
    assert "sha256 mismatch" in caplog.text
    assert not blob.exists() and not status("fake").target.downloaded
    assert pull("fake").target.read_bytes() == TARGET


def test_remove_deletes_files_and_markers(hub, dirs):
    pair = pull("fake")
    removal = remove("fake")
    assert set(removal.removed) >= {pair.target, pair.draft}
    assert removal.kept == ()
    assert not pair.target.exists() and not pair.draft.exists()
    assert not (dirs.home / "models" / "fake").exists()
    assert not status("fake").downloaded
    assert remove("fake").removed == ()


def test_remove_keeps_hub_files_another_entry_uses(hub, dirs):
    dirs.user_file.write_text(
        FAKE_PAIR
        + pair_toml(
            "other", ("t2.gguf", [hf_source("org/other-GGUF", "t2.gguf")]), ("d.gguf", [DRAFT_HF])
        )
    )
    pair = pull("fake", registry=load_registry())
    removal = remove("fake")
    assert removal.kept == ((pair.draft, "also used by other"),)
    assert pair.draft.exists() and not pair.target.exists()
