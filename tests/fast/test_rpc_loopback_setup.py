"""scripts/rpc_loopback.sh's set-up step (its RPC venv), run for real with a fake wheel: no
build, no network. The venv must see the packages of the python that runs it (the README's
install lives in a venv) after its own, where the RPC build shadows the plain one."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from svip_local import native

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "rpc_loopback.sh"

pytestmark = pytest.mark.skipif(
    native.supports_rpc(), reason="this llama_cpp has RPC already: the script installs nothing")


def fake_wheel(directory: Path) -> Path:
    """A wheel named like the RPC build whose one module says it came from the wheel."""
    path = directory / "llama_cpp_python-0.3.36-py3-none-any.whl"
    info = "llama_cpp_python-0.3.36.dist-info"
    files = {
        "svip_probe_mod.py": 'VALUE = "wheel"\n',
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: 0.3.36\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in {**files, f"{info}/RECORD": record}.items():
            zf.writestr(name, text)
    return path


def purelib(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                          "'purelib'))"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def user_venv(tmp_path: Path) -> Path:
    """A venv without system site packages, as `python -m venv .venv` makes: what the README's
    `pip install -e` put there stands in for this interpreter's packages linked in (its
    site directories), the repository, and two modules only it holds."""
    venv = tmp_path / "user-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    packages = purelib(python)
    ours = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE
                                        else [])]
    (packages / "user_env.pth").write_text(
        f"{ROOT}\nimport site; " + "; ".join(f"site.addsitedir({d!r})" for d in ours) + "\n")
    (packages / "svip_user_only.py").write_text("")
    (packages / "svip_probe_mod.py").write_text('VALUE = "user venv"\n')
    return python


def run_setup(python: Path, tools: Path, wheel: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PYTHON": str(python), "SVIP_LOCAL_TOOLS_DIR": str(tools), "RPC_WHEEL": str(wheel)}
    return subprocess.run(["bash", str(SCRIPT), "--setup-only"], env=env, capture_output=True,
                          text=True, timeout=120)


def in_rpc_venv(tools: Path, code: str) -> str:
    """Run `code` in the RPC venv from outside the repository (nothing from the cwd)."""
    out = subprocess.run([str(tools / "rpc-venv" / "bin" / "python"), "-c", code],
                         capture_output=True, text=True, cwd=tools, check=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    return out.stdout.strip()


def test_setup_from_a_venv_sees_its_packages_after_the_rpc_build(tmp_path: Path) -> None:
    python, tools, wheel = user_venv(tmp_path), tmp_path / "tools", fake_wheel(tmp_path)
    # A venv left by the earlier script (system site packages) is made again.
    tools.mkdir()
    subprocess.run([str(python), "-m", "venv", "--without-pip", "--system-site-packages",
                    str(tools / "rpc-venv")], check=True)
    result = run_setup(python, tools, wheel)
    # The fake wheel has no RPC: set-up gets as far as the last check, which says so.
    assert result.returncode == 1, result.stderr
    assert "No module named" not in result.stderr
    assert "making the RPC venv" in result.stderr
    assert f"installing the RPC build {wheel}" in result.stderr
    assert "has no RPC backend" in result.stderr and "is " + str(wheel) in result.stderr
    cfg = (tools / "rpc-venv" / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg
    seen = in_rpc_venv(tools, "import svip_probe_mod, svip_user_only, svip_local, diskcache; "
                              "print(svip_probe_mod.VALUE); print(svip_user_only.__file__); "
                              "print(svip_local.__file__)")
    value, user_only, svip = seen.splitlines()
    assert value == "wheel"  # the venv's own packages first
    assert Path(user_only).parent == purelib(python)
    assert Path(svip).parent == ROOT / "svip_local"

    again = run_setup(python, tools, wheel)  # the venv is kept, the link written again
    assert "making the RPC venv" not in again.stderr
    assert "has no RPC backend" in again.stderr


def test_setup_from_this_interpreter(tmp_path: Path) -> None:
    """Whatever runs the tests: a system install, or a venv."""
    tools, wheel = tmp_path / "tools", fake_wheel(tmp_path)
    result = run_setup(Path(sys.executable), tools, wheel)
    assert result.returncode == 1 and "has no RPC backend" in result.stderr, result.stderr
    assert in_rpc_venv(tools, "import svip_probe_mod, svip_local.native, diskcache; "
                              "print(svip_probe_mod.VALUE)") == "wheel"
