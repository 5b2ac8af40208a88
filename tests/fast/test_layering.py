"""Layering, checked in fresh interpreters: the engine never pulls in the TUI, and only
svip_local.native (and the bench's llama-cpp-python peer) talks to llama_cpp."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_engine_does_not_import_textual() -> None:
    mods = imported_modules("import svip_local, svip_local.engine, svip_local.registry")
    assert "svip_local.engine" in mods
    assert not {m for m in mods if m == "textual" or m.startswith("textual.")}
    assert "tui" not in mods


def test_only_native_imports_llama_cpp() -> None:
    importers = []
    for path in [*(ROOT / "svip_local").rglob("*.py"), *(ROOT / "tui").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "llama_cpp" or n.startswith("llama_cpp.") for n in names):
                importers.append(path.relative_to(ROOT).as_posix())
    native = [p for p in importers if p.startswith("svip_local/native/")]
    # The one exception: the benchmark peer that races llama-cpp-python's own `Llama`.
    assert native and sorted(set(importers) - set(native)) == ["svip_local/bench/python_peer.py"]


def test_the_public_api_and_the_cli_load_no_libllama() -> None:
    """`import svip_local`, its light names, and building every CLI subcommand (what
    `svip-local list` does) never load llama.cpp: that waits for an engine."""
    mods = imported_modules(
        "import svip_local, svip_local.registry, svip_local.cli\n"
        "from svip_local import SamplingParams, check_spec, load\n"
        "from svip_local.policies import parse_policy, policy_help\n"
        "parse_policy('svip:0.3+lookup:4:8'); svip_local.cli.build_parser()")
    assert "svip_local.policies" in mods and "svip_local.cli.bench" in mods
    assert not {m for m in mods if m == "llama_cpp" or m.startswith("llama_cpp.")}


def test_every_public_name_resolves_and_is_typed() -> None:
    """The lazy exports and the block type checkers read name the same things."""
    import svip_local

    tree = ast.parse((ROOT / "svip_local" / "__init__.py").read_text())
    typed = {alias.asname or alias.name: (node.module, alias.name) for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("svip_local")
             for alias in node.names}
    assert typed.keys() == set(svip_local.__all__)
    for name, (module, defined) in typed.items():  # the object the type checkers see
        assert getattr(svip_local, name) is getattr(importlib.import_module(module), defined)
