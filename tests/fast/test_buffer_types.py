"""llama.cpp's extra buffer types (repacked weights) are on, except AMX, which crashes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from svip_local import native


@pytest.mark.parametrize(("available", "env", "kept"), [
    (["AMX", "CPU_REPACK"], {}, ["CPU_REPACK"]),  # Sapphire Rapids: llama.cpp issue 20824
    (["CPU_REPACK"], {}, ["CPU_REPACK"]),  # AVX2 / AVX-512 without AMX: all of it
    (["AMX", "CPU_REPACK"], {"SVIP_LOCAL_AMX": "1"}, ["AMX", "CPU_REPACK"]),
    (["AMX", "CPU_REPACK"], {"SVIP_LOCAL_EXTRA_BUFTS": "0"}, []),
    ([], {}, []),
])
def test_which_buffer_types_are_kept(available: list[str], env: dict[str, str],
                                     kept: list[str]) -> None:
    assert native.buffer_types_to_keep(available, env) == kept


def test_this_process_loads_models_without_amx() -> None:
    assert "AMX" not in native.EXTRA_BUFFER_TYPES
    assert native.use_extra_buffer_types()


def llama_cpp_list(env: dict[str, str]) -> list[str]:
    """The list llama.cpp itself reads at every model load, in a fresh process with `env`."""
    code = ("from svip_local.native import buffers\n"
            "t = buffers._cpu_extra_buffer_types()\n"
            "print(' '.join(buffers._buffer_type_name(b) for b in t[:-1]) if t else '')")
    base = {k: v for k, v in os.environ.items() if not k.startswith("SVIP_LOCAL_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**base, **env}).stdout.split()


def test_llama_cpp_s_own_list_lost_amx_and_kept_the_rest() -> None:
    everything = llama_cpp_list({"SVIP_LOCAL_AMX": "1"})
    assert llama_cpp_list({}) == [n for n in everything if n != "AMX"]
    assert llama_cpp_list({}) == list(native.EXTRA_BUFFER_TYPES)
