"""The CPU's extra buffer types (weights repacked for its kernels): on, but for the one that
crashes, which is taken out of llama.cpp's own list when this module loads."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, Sequence

import llama_cpp.llama_cpp as C

from svip_local.native.log import log

# Extra buffer types hold weights repacked for this CPU's kernels: CPU_REPACK (AVX2/AVX-512
# layouts, llama.cpp's default: +15% decode on an AVX-512 EPYC, +44% on a Sapphire Rapids
# Xeon, scripts/bench_parity.py) and, where the build has AMX and the kernel grants its tile
# permission, AMX. The AMX one segfaults in ggml_backend_amx_mul_mat on the first multi-token
# batch of a Q4_K model (llama.cpp issue 20824, open upstream; reproduced on Sapphire Rapids
# VMs that do grant the permission), so it alone is taken out of the list llama.cpp builds
# models from. SVIP_LOCAL_AMX=1 (read once, when this module loads) keeps it;
# SVIP_LOCAL_EXTRA_BUFTS=0 (read at each model load) turns them all off.
UNSAFE_BUFFER_TYPES = ("AMX",)
_CPU_DEVICE = 0  # GGML_BACKEND_DEVICE_TYPE_CPU


def buffer_types_to_keep(available: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """Which of the CPU's extra buffer types (llama.cpp's order) models should load with."""
    if env.get("SVIP_LOCAL_EXTRA_BUFTS", "1") == "0":
        return []
    if env.get("SVIP_LOCAL_AMX") == "1":
        return list(available)
    return [name for name in available if name not in UNSAFE_BUFFER_TYPES]


def _cpu_extra_buffer_types() -> ctypes.Array[ctypes.c_void_p] | None:
    """llama.cpp's own NULL-terminated list of the CPU's extra buffer types (a static array in
    ggml-cpu that every model load reads), or None where this build does not expose it."""
    lib, vp = C._lib, ctypes.c_void_p
    try:
        by_type, reg_of = lib.ggml_backend_dev_by_type, lib.ggml_backend_dev_backend_reg
        proc_of, name_of = lib.ggml_backend_reg_get_proc_address, lib.ggml_backend_buft_name
    except AttributeError:
        return None
    by_type.restype, by_type.argtypes = vp, [ctypes.c_int]
    reg_of.restype, reg_of.argtypes = vp, [vp]
    proc_of.restype, proc_of.argtypes = vp, [vp, ctypes.c_char_p]
    name_of.restype, name_of.argtypes = ctypes.c_char_p, [vp]
    device = by_type(_CPU_DEVICE)
    proc = proc_of(reg_of(device), b"ggml_backend_dev_get_extra_bufts") if device else None
    if not proc:
        return None
    first = ctypes.CFUNCTYPE(ctypes.POINTER(vp), vp)(proc)(device)
    n = 0
    while first[n]:
        n += 1
    return (vp * (n + 1)).from_address(ctypes.addressof(first.contents))


def _buffer_type_name(buft: int) -> str:
    return str(C._lib.ggml_backend_buft_name(buft).decode())


def _keep_safe_buffer_types() -> tuple[str, ...]:
    """Drop the unsafe extra buffer types from llama.cpp's list, in place; return what is left."""
    table = _cpu_extra_buffer_types() if use_extra_buffer_types() else None
    if table is None:  # off (every model loads with use_extra_bufts false), or not exposed
        return ()
    entries = [b for b in table[:-1] if b is not None]  # non-NULL up to its end
    names = [_buffer_type_name(b) for b in entries]
    keep = buffer_types_to_keep(names, os.environ)
    kept = [b for b, name in zip(entries, names, strict=True) if name in keep]
    for i, buft in enumerate([*kept, None]):
        table[i] = buft
    dropped = sorted(set(names) - set(keep))
    if dropped:
        log.info("extra buffer types %s left out (SVIP_LOCAL_AMX=1 keeps AMX)", dropped)
    return tuple(_buffer_type_name(b) for b in kept)


def use_extra_buffer_types() -> bool:
    """Whether models load with the CPU's extra buffer types (SVIP_LOCAL_EXTRA_BUFTS=0: not)."""
    return os.environ.get("SVIP_LOCAL_EXTRA_BUFTS", "1") != "0"


EXTRA_BUFFER_TYPES = _keep_safe_buffer_types()
