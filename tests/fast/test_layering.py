"""Layering, checked in fresh interpreters: the engine never pulls in the TUI, and only
svip_local.native talks to llama_cpp."""

from __future__ import annotations

import ast
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
    offenders = []
    for path in [*(ROOT / "svip_local").rglob("*.py"), *(ROOT / "tui").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "llama_cpp" or n.startswith("llama_cpp.") for n in names):
                offenders.append(path.relative_to(ROOT).as_posix())
    assert offenders == ["svip_local/native.py"] * len(offenders) and offenders
