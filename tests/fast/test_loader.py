"""`svip_local.load`: the one way the CLI, the TUI and the server make an engine."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import get_type_hints

import pytest

from svip_local import Engine, InvalidRequestError, ModelFileError, ModelNotDownloadedError, load
from svip_local.config import EngineConfig, EngineSettings
from svip_local.errors import UnknownModelError
from tests.support.registry_fakes import FakeHub


def test_a_missing_pair_is_refused_with_the_command_that_pulls_it(
        tiny_pair_on_hub: FakeHub) -> None:
    with pytest.raises(ModelNotDownloadedError, match="svip-local pull tiny"):
        load("tiny")
    assert tiny_pair_on_hub.requests == []


def test_a_name_pulls_with_consent_and_brings_its_settings(tiny_pair_on_hub: FakeHub) -> None:
    seen: list[str] = []
    with load("tiny", pull=True, n_threads=1,
              progress=lambda label, done, total: seen.append(label)) as engine:
        assert engine.config.n_ctx == 512 and engine.config.policy == "auto"
        assert engine.draft_model is not None and seen
        assert engine.complete("The quick brown fox", max_tokens=4).stats.generated == 4
    asked = len(tiny_pair_on_hub.requests)
    # Now on disk: no network, and what the caller sets wins over the pair's settings.
    with load("tiny", n_ctx=256, policy="svip:0.3", n_threads=1) as engine:
        assert engine.config.n_ctx == 256 and engine.policy.name == "svip:0.3"
    assert len(tiny_pair_on_hub.requests) == asked


def test_paths_load_a_pair_or_the_target_alone(tiny_target: Path,
                                               tiny_draft_noisy: Path) -> None:
    with load(target=tiny_target, draft=tiny_draft_noisy, n_ctx=128, n_threads=1,
              policy="constant:2") as engine:
        assert engine.draft_model is not None and engine.config.n_ctx == 128
        assert engine.complete("The quick", max_tokens=6).stats.drafted > 0
    with load(str(tiny_target), n_threads=1, n_ctx=None) as alone:  # None: the default
        assert alone.draft_model is None and alone.config.n_ctx == 4096


def test_bad_requests_get_specific_errors(tiny_target: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="unknown engine setting.*n_tread"):
        load(target=tiny_target, n_tread=1)
    with pytest.raises(InvalidRequestError, match="not both"):
        load("tiny", target=tiny_target)
    with pytest.raises(InvalidRequestError, match="name a registry pair"):
        load()
    with pytest.raises(UnknownModelError, match="no-such-pair"):
        load("no-such-pair")
    with pytest.raises(ModelFileError, match="not found"):
        load(tmp_path / "missing.gguf")
    with pytest.raises(InvalidRequestError, match="n_ctx must be at least 64"):
        load(target=tiny_target, n_ctx=8)


def test_the_typed_settings_are_the_engine_configs_fields() -> None:
    """`load` and `Engine` take `EngineSettings`: every `EngineConfig` field under its name,
    typed as the field or None (unset); the RPC endpoints also as one comma-separated string."""
    fields = get_type_hints(EngineConfig)
    settings = get_type_hints(EngineSettings)
    assert list(settings) == list(fields)
    also = {"rpc_servers": str, "draft_rpc_servers": str}
    for name, kind in fields.items():
        assert settings[name] == kind | also.get(name, None) | None, name
    for function in (load, Engine.__init__):
        rest = [p.annotation for p in inspect.signature(function).parameters.values()
                if p.kind is inspect.Parameter.VAR_KEYWORD]
        assert rest == ["Unpack[EngineSettings]"], function
