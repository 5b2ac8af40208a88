"""`svip-local generate --json-schema / --json-object / --regex / --grammar` through the console
entry point, on the tiny target: output as the library gives it, bad files refused by name
before any model loads."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from svip_local import Constraint, Engine
from svip_local.cli import main

PROMPT = "The quick brown fox"
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "adult"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "adult": {"type": "boolean"}}}


def generate(target: Path, capsys: pytest.CaptureFixture[str], *extra: str
             ) -> dict[str, object]:
    """Run the command with --json: its result object (the exit code checked)."""
    code = main(["generate", "--target", str(target), "--prompt", PROMPT, "--max-tokens", "48",
                 "--threads", "1", "--n-ctx", "512", "--json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out: dict[str, object] = json.loads(captured.out.strip().splitlines()[-1])
    return out


def library(target: Path, constraint: Constraint) -> list[int]:
    with Engine(target, n_ctx=512, n_threads=1) as alone:
        return list(alone.complete(PROMPT, max_tokens=48, constraint=constraint).tokens)


def test_json_schema_file(tiny_target: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    out = generate(tiny_target, capsys, "--json-schema", str(schema))
    assert out["finish_reason"] in ("eos", "stop")
    jsonschema.validate(json.loads(str(out["text"])), PERSON)
    assert out["tokens"] == library(tiny_target, Constraint.json_schema(PERSON))


@pytest.mark.parametrize(("option", "file", "matches"), [
    (["--json-object"], None, lambda t: isinstance(json.loads(t), dict)),
    (["--regex", "(yes|no), [0-9]{2}"], None,
     lambda t: re.fullmatch(r"(yes|no), [0-9]{2}", t)),
    (["--grammar"], ("g.gbnf", 'root ::= ("yes" | "no") "!"'), lambda t: t in ("yes!", "no!")),
    (["--grammar"], ("g.lark", 'start: ("yes" | "no") "?"'), lambda t: t in ("yes?", "no?")),
], ids=["json-object", "regex", "gbnf", "lark"])
def test_each_constraint_option(tiny_target: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str], option: list[str],
                                file: tuple[str, str] | None,
                                matches: Callable[[str], object]) -> None:
    args = list(option)
    if file is not None:
        (tmp_path / file[0]).write_text(file[1])
        args.append(str(tmp_path / file[0]))
    out = generate(tiny_target, capsys, *args)
    text = str(out["text"])
    assert out["finish_reason"] in ("eos", "stop") and matches(text), text


BAD = [  # (id, option, file name and content or None for the value itself, words)
    ("schema-missing", "--json-schema", ("absent.json", None), ["cannot read", "absent.json"]),
    ("schema-not-json", "--json-schema", ("bad.json", '{"type": '), ["not JSON", "bad.json"]),
    ("schema-invalid", "--json-schema", ("bad.json", '{"type": "objekt"}'), ["JSON Schema"]),
    ("schema-not-utf8", "--json-schema", ("bad.json", b"\xff\xfe{}"), ["UTF-8"]),
    ("grammar-suffix", "--grammar", ("g.txt", 'root ::= "x"'), [".gbnf", ".lark", "g.txt"]),
    ("grammar-missing", "--grammar", ("absent.gbnf", None), ["cannot read", "absent.gbnf"]),
    ("gbnf-syntax", "--grammar", ("g.gbnf", 'root ::= ("x"'), ["GBNF"]),
    ("lark-syntax", "--grammar", ("g.lark", "start: ((("), ["Lark"]),
    ("regex-syntax", "--regex", "(unclosed", ["regex"]),
]


@pytest.mark.parametrize(("option", "value", "words"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_constraints_fail_before_loading(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str], option: str,
                                             value: str | tuple[str, str | bytes | None],
                                             words: list[str]) -> None:
    if isinstance(value, tuple):
        path = tmp_path / value[0]
        if isinstance(value[1], bytes):
            path.write_bytes(value[1])
        elif value[1] is not None:
            path.write_text(value[1])
        value = str(path)
    # The model path does not exist: the constraint's error must come first.
    code = main(["generate", "--target", str(tmp_path / "nope.gguf"), "--prompt", "x",
                 option, value])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("svip-local: error: ") and "model file" not in err
    for word in words:
        assert word in err, err


def test_constraint_options_exclude_each_other(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["generate", "--target", str(tmp_path / "x.gguf"), "--prompt", "x",
              "--json-object", "--regex", "a+"])
    assert usage.value.code == 2
    assert "not allowed with" in capsys.readouterr().err
