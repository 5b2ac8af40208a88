"""`svip-local chat`: consent before pulling, argument checks, what reaches the app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import tui.app
from svip_local.cli import main
from tui.config import ChatSettings, ModelSource

PAIR = "qwen2.5-coder-1.5b"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def nothing_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVIP_LOCAL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[tuple[ModelSource | None, ChatSettings]]:
    """Stands in for the app: records what it was started with."""
    calls: list[tuple[ModelSource | None, ChatSettings]] = []

    class FakeApp:
        def __init__(self, source: ModelSource | None, settings: ChatSettings) -> None:
            calls.append((source, settings))

        def run(self) -> None:
            pass

    monkeypatch.setattr(tui.app, "ChatApp", FakeApp)
    return calls


def terminal(monkeypatch: pytest.MonkeyPatch, answer: str | None) -> None:
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(isatty=lambda: True))

    def ask(prompt: str) -> str:
        assert answer is not None, f"asked {prompt!r} although it should not ask"
        assert f"{PAIR} is not downloaded yet" in prompt and "[Y/n]" in prompt
        return answer

    monkeypatch.setattr("builtins.input", ask)


def test_without_a_terminal_it_names_the_pull_command(launched, capsys) -> None:
    assert main(["chat", PAIR]) == 1
    err = capsys.readouterr().err
    assert f"svip-local pull {PAIR}" in err and "--yes" in err
    assert launched == []


@pytest.mark.parametrize("answer", ["", "y", "YES"])
def test_on_a_terminal_it_asks_then_pulls_in_the_app(launched, monkeypatch, answer) -> None:
    terminal(monkeypatch, answer)
    assert main(["chat", PAIR, "--policy", "svip:0.4"]) == 0
    [(source, settings)] = launched
    assert source == ModelSource(pair=PAIR, pull=True)
    assert settings.policy == "svip:0.4"


def test_saying_no_downloads_nothing(launched, monkeypatch, capsys) -> None:
    terminal(monkeypatch, "n")
    assert main(["chat", PAIR]) == 1
    assert f"later: svip-local pull {PAIR}" in capsys.readouterr().err
    assert launched == []


def test_yes_skips_the_question(launched, monkeypatch) -> None:
    terminal(monkeypatch, None)
    assert main(["chat", PAIR, "--yes"]) == 0
    assert launched[0][0] == ModelSource(pair=PAIR, pull=True)


def test_paths_and_settings_reach_the_app(launched, tmp_path: Path) -> None:
    target, draft = tmp_path / "t.gguf", tmp_path / "d.gguf"
    assert main(["chat", "--target", str(target), "--draft", str(draft), "--n-ctx", "1024",
                 "--n-gpu-layers", "0", "--threads", "2", "--max-tokens", "64",
                 "--temperature", "0.7", "--system", "Be brief."]) == 0
    [(source, settings)] = launched
    assert source == ModelSource(target=target, draft=draft)
    assert settings == ChatSettings(system_prompt="Be brief.", policy="auto", temperature=0.7,
                                    max_tokens=64, n_ctx=1024, n_gpu_layers=0, n_threads=2)


def test_no_name_opens_the_pair_picker(launched) -> None:
    assert main(["chat"]) == 0
    assert launched[0][0] is None


@pytest.mark.parametrize("argv, error", [
    (["chat", PAIR, "--target", "t.gguf"], "not both"),
    (["chat", "--draft", "d.gguf"], "--draft goes with --target"),
    (["chat", "no-such-pair"], "no-such-pair"),
])
def test_bad_arguments_are_clean_errors(launched, capsys, argv, error) -> None:
    assert main(argv) == 1
    assert error in capsys.readouterr().err
    assert launched == []


def test_the_cli_loads_textual_only_when_the_app_starts() -> None:
    code = ("import sys, svip_local.cli as c; c.build_parser(); "
            "print(any(m.split('.')[0] in ('textual', 'tui') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
