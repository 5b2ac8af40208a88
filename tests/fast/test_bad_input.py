"""What a new user tries that used to crash: each case, as data, gets its specific error and
loses nothing (the library's exceptions, the CLI's exit codes and messages)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from svip_local import (
    Engine,
    EngineClosedError,
    InvalidRequestError,
    SamplingParams,
    SvipError,
)
from svip_local.cli import main
from svip_local.native import log as native_log
from tests.support.registry_fakes import RegistryDirs, hf_source, pair_toml

PROMPT = "The quick brown fox"


@pytest.fixture
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Iterator[Engine]:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=256, n_threads=1, policy="none",
                parallel=2) as eng:
        yield eng


def closed_then(action: Callable[[Engine], object]) -> Callable[[Engine], object]:
    def run(engine: Engine) -> object:
        engine.close()
        engine.close()  # twice is harmless
        return action(engine)
    return run


def more_generations_than_slots_left_suspended(engine: Engine) -> object:
    """Every slot held by a generator this thread started and left suspended: the next one
    would wait for a slot forever."""
    held = [engine.generate(PROMPT, max_tokens=20, ignore_eos=True)
            for _ in range(engine.parallel)]
    for events in held:
        next(events)
    return list(engine.generate(PROMPT, max_tokens=4))


API_CASES: list[tuple[str, Callable[[Engine], object], type[SvipError], str]] = [
    ("closed: generate", closed_then(lambda e: list(e.generate("hi", max_tokens=4))),
     EngineClosedError, "the engine is closed"),
    ("closed: complete", closed_then(lambda e: e.complete("hi", max_tokens=4)),
     EngineClosedError, "the engine is closed"),
    ("closed: tokenize", closed_then(lambda e: e.tokenize("hi")), EngineClosedError,
     "the engine is closed"),
    ("closed: reset", closed_then(lambda e: e.reset()), EngineClosedError,
     "the engine is closed"),
    ("closed: a model's own tokenizer", closed_then(lambda e: e.target_model.tokenize("hi")),
     EngineClosedError, "is closed"),
    ("closed: a context", closed_then(lambda e: e.target_ctx.decode([1, 2])),
     EngineClosedError, "is closed"),
    ("every slot held by suspended generators", more_generations_than_slots_left_suspended,
     InvalidRequestError, r"all 2 slots are held by generations this thread.*its close\(\)"),
    ("seed -1", lambda e: SamplingParams(temperature=1.0, seed=-1), InvalidRequestError,
     "seed must be a whole number from 0 to 2\\*\\*64 - 1"),
    ("seed 2**64", lambda e: SamplingParams(seed=2**64), InvalidRequestError, "seed must be"),
    ("seed 1.5", lambda e: SamplingParams(seed=1.5), InvalidRequestError, "seed must be"),
    ("seed True", lambda e: SamplingParams(seed=True), InvalidRequestError, "seed must be"),
    ("undecodable bytes in a prompt", lambda e: e.complete(os.fsdecode(b"ab\xff\xfecd")),
     InvalidRequestError, "not valid Unicode at character 2"),
]


@pytest.mark.parametrize(("action", "error", "message"), [c[1:] for c in API_CASES],
                         ids=[c[0] for c in API_CASES])
def test_the_library_raises_a_specific_error(engine: Engine, action: Callable[[Engine], object],
                                             error: type[SvipError], message: str) -> None:
    with pytest.raises(error, match=message):
        action(engine)
    if not engine.closed:  # and loses nothing: the engine still generates
        assert engine.complete(PROMPT, max_tokens=4).stats.generated == 4


def test_closing_under_a_suspended_generator_ends_it_with_an_error(engine: Engine) -> None:
    events = engine.generate(PROMPT, max_tokens=20, policy="constant:2", ignore_eos=True)
    next(events)
    engine.close()  # does not wait for the reader: its request ends with an error
    with pytest.raises(EngineClosedError, match="closed while this request ran"):
        list(events)
    with pytest.raises(EngineClosedError):
        engine.complete(PROMPT, max_tokens=2)


# -- the command line -----------------------------------------------------------------------

class _Stdin(io.TextIOWrapper):
    def __init__(self, data: bytes | None) -> None:
        super().__init__(io.BytesIO(data or b""), encoding="utf-8")
        self._tty = data is None

    def isatty(self) -> bool:
        return self._tty


def broken_user_registry(dirs: RegistryDirs) -> None:
    good = pair_toml("mine", ("t.gguf", [hf_source("org/t", "t.gguf")]),
                     ("d.gguf", [hf_source("org/d", "d.gguf")]))
    dirs.user_file.write_text(good + '\n[pairs."broken"]\ndescription = 3\n')


def interrupted_during_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C arriving while llama.cpp calls back into Python (its log, as it loads)."""
    def interrupt(level: int, text: bytes) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(native_log, "_log_line", interrupt)


# (id, argv after the model arguments, stdin bytes (None: a terminal), setup, exit code,
#  text that must be on stderr or in a warning, text that must be on stdout)
CLI_CASES: list[tuple[str, list[str], bytes | None, str, int, str, str]] = [
    ("seed -1", ["--prompt", "x", "--seed", "-1", "--temperature", "1"], None, "", 1,
     "seed must be a whole number", ""),
    ("invalid UTF-8 prompt", ["--prompt", os.fsdecode(b"ab\xff\xfecd")], None, "", 1,
     r"not valid UTF-8 at byte 2 \(b'\\xff'\); pass --encoding-errors replace", ""),
    ("invalid UTF-8 replaced", ["--prompt", os.fsdecode(b"ab\xff\xfecd"), "--encoding-errors",
                                "replace", "--max-tokens", "3"], None, "", 0, "", ""),
    ("prompt file", ["--prompt-file", "{prompt_file}", "--max-tokens", "3", "--json"], None, "",
     0, "", '"finish_reason"'),
    ("missing prompt file", ["--prompt-file", "{tmp}/nothing.txt"], None, "", 1,
     "cannot read the prompt file", ""),
    ("prompt on stdin", ["--max-tokens", "3", "--json"], b"The quick", "", 0, "", '"tokens"'),
    ("prompt - reads stdin", ["--prompt", "-", "--max-tokens", "3"], b"The quick", "", 0, "",
     ""),
    ("no prompt at all", [], None, "", 1, "give the prompt", ""),
    ("negative threads", ["--prompt", "x", "--threads", "-4"], None, "", 1,
     "n_threads must be >= 1", ""),
    ("zero context", ["--prompt", "x", "--n-ctx", "0"], None, "", 1,
     "n_ctx must be at least 64", ""),
    ("context rounded up", ["--prompt", "x", "--n-ctx", "64", "--max-tokens", "2"], None, "", 0,
     "n_ctx 64 became 256", ""),
    ("Ctrl-C while loading", ["--prompt", "x"], None, "interrupt", 130, "interrupted", ""),
]


@pytest.mark.parametrize(("argv", "stdin", "setup", "code", "err", "out"),
                         [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_generate_refuses_or_reports(tiny_target: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str],
                                     caplog: pytest.LogCaptureFixture, argv: list[str],
                                     stdin: bytes | None, setup: str, code: int, err: str,
                                     out: str) -> None:
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_bytes(b"The quick brown")
    argv = [a.format(prompt_file=prompt_file, tmp=tmp_path) for a in argv]
    monkeypatch.setattr("sys.stdin", _Stdin(stdin))
    if setup == "interrupt":
        interrupted_during_load(monkeypatch)
    command = ["generate", "--target", str(tiny_target)]
    if "--threads" not in argv:
        command += ["--threads", "1"]
    with caplog.at_level(logging.WARNING):
        got = main([*command, *argv])
    captured = capsys.readouterr()
    assert got == code, captured.err
    assert re.search(err, captured.err + caplog.text), captured.err + caplog.text
    assert out in captured.out
    if setup == "interrupt":
        assert captured.out == ""  # nothing was generated


def test_json_commands_print_their_errors_as_json(capsys: pytest.CaptureFixture[str],
                                                  dirs: RegistryDirs) -> None:
    assert main(["path", "qwen2.5-coder-1.5b", "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["type"] == "ModelNotDownloadedError"
    assert "svip-local pull qwen2.5-coder-1.5b" in error["message"]


def test_a_broken_user_entry_is_reported_and_the_rest_stays_usable(
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
        dirs: RegistryDirs) -> None:
    broken_user_registry(dirs)
    with caplog.at_level(logging.WARNING):
        assert main(["list", "--json"]) == 0
    names = {row["name"] for row in json.loads(capsys.readouterr().out)}
    assert {"qwen2.5-coder-1.5b", "mine"} <= names and "broken" not in names
    assert "pairs.broken" in caplog.text and "left out" in caplog.text


def test_a_user_file_that_is_not_toml_leaves_the_shipped_pairs(
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
        dirs: RegistryDirs) -> None:
    dirs.user_file.write_text("[pairs.\nthis is not toml")
    with caplog.at_level(logging.WARNING):
        assert main(["list"]) == 0
    assert "qwen2.5-coder-1.5b" in capsys.readouterr().out
    assert "not valid TOML" in caplog.text


def test_ctrl_c_while_loading_leaves_the_next_load_working(tiny_target: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    interrupted_during_load(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        Engine(tiny_target, n_ctx=64, n_threads=1)
    monkeypatch.undo()
    with Engine(tiny_target, n_ctx=64, n_threads=1) as engine:
        assert engine.complete(PROMPT, max_tokens=2).stats.generated == 2
