"""Where a model's layers can run: this machine's GPUs and CPU cores, and other machines'
devices through llama.cpp's RPC backend (with ggml's abort hook, which names the RPC server
that hung up)."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as C

from svip_local import rpc
from svip_local.errors import RemoteServerError, RpcUnavailableError

_log = logging.getLogger(__name__)  # svip-local's own, beside llama.cpp's (native.log)


def supports_gpu_offload() -> bool:
    return bool(C.llama_supports_gpu_offload())


# ggml_backend_dev_type (ggml-backend.h): CPU=0, GPU=1, IGPU=2, ACCEL=3. llama-cpp-python 0.3.36
# binds none of the device API, but libllama links ggml, so its symbols resolve through it.
_GPU_DEVICE_TYPES = (1, 2)


@functools.cache
def _gpu_handles() -> tuple[tuple[int, int], ...] | None:
    """This machine's GPU devices in ggml's order, as (handle, device type); None in a build
    that hides ggml's symbols. RPC servers' devices are never among them: svip-local hands
    them to one model each instead of registering them."""
    lib = C._lib
    try:
        count, get = lib.ggml_backend_dev_count, lib.ggml_backend_dev_get
        kind, describe = lib.ggml_backend_dev_type, lib.ggml_backend_dev_description
    except AttributeError:
        return None
    count.restype, get.restype, get.argtypes = ctypes.c_size_t, ctypes.c_void_p, [ctypes.c_size_t]
    kind.restype, kind.argtypes = ctypes.c_int, [ctypes.c_void_p]
    describe.restype, describe.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    devices = (int(get(i)) for i in range(count()))
    return tuple((d, t) for d in devices if (t := kind(d)) in _GPU_DEVICE_TYPES)


@functools.cache
def gpu_devices() -> tuple[str, ...]:
    """The GPUs llama.cpp itself would offload to (CUDA, Metal, Vulkan ...), by description.
    Empty on a build whose offload is RPC's alone."""
    if not supports_gpu_offload():
        return ()
    handles = _gpu_handles()
    if handles is None:  # offload works, names unknown
        return ("gpu",)
    return tuple((C._lib.ggml_backend_dev_description(d) or b"gpu").decode(
        "utf-8", errors="replace") for d, _ in handles)


def gpu_name() -> str:
    """The first GPU's name when this llama.cpp build can offload, else "cpu"."""
    return next(iter(gpu_devices()), "cpu")


# -- llama.cpp's RPC backend: a model's layers on other machines' devices -------------------------
# llama-cpp-python 0.3.36 binds none of it (its `rpc_servers` argument is gone): servers are
# added through ggml's backend registry, as llama.cpp's own `--rpc` does, and each model names
# its devices, so a draft never lands on a target's servers.
RPC_BUILD = ('CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-deps --no-cache-dir '
             '--no-binary llama-cpp-python llama-cpp-python==0.3.36')


def _rpc_registry() -> int | None:
    """ggml's "RPC" backend registry entry, None in a build without it."""
    lib, vp = C._lib, ctypes.c_void_p
    try:
        by_name = lib.ggml_backend_reg_by_name
    except AttributeError:
        return None
    by_name.restype, by_name.argtypes = vp, [ctypes.c_char_p]
    reg = by_name(b"RPC")
    return int(reg) if reg else None


def supports_rpc() -> bool:
    return _rpc_registry() is not None


@functools.cache
def rpc_add_server() -> Any:
    """`ggml_backend_rpc_add_server(endpoint) -> registry of that server's devices`."""
    reg = _rpc_registry()
    if reg is None:
        raise RpcUnavailableError(
            "this llama-cpp-python was built without RPC, so a model cannot use RPC servers; "
            f"rebuild it with RPC (a few minutes): {RPC_BUILD}")
    lib, vp = C._lib, ctypes.c_void_p
    proc_of = lib.ggml_backend_reg_get_proc_address
    proc_of.restype, proc_of.argtypes = vp, [vp, ctypes.c_char_p]
    proc = proc_of(reg, b"ggml_backend_rpc_add_server")
    if not proc:
        raise RpcUnavailableError("this llama.cpp's RPC backend has no add_server entry point "
                                  f"(an older build?); rebuild: {RPC_BUILD}")
    for name, restype, argtypes in (("ggml_backend_reg_dev_count", ctypes.c_size_t, [vp]),
                                    ("ggml_backend_reg_dev_get", vp, [vp, ctypes.c_size_t])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    _watch_aborts()
    return ctypes.CFUNCTYPE(vp, ctypes.c_char_p)(proc)


def rpc_devices(endpoint: str) -> list[int]:
    """The devices `endpoint` lends (llama.cpp connects to it here)."""
    reg = rpc_add_server()(endpoint.encode())
    n = C._lib.ggml_backend_reg_dev_count(reg) if reg else 0
    if not n:
        raise RemoteServerError(endpoint, "lends no device")
    return [int(C._lib.ggml_backend_reg_dev_get(reg, i)) for i in range(n)]


def local_gpu_devices() -> list[int]:
    """This machine's GPUs as llama.cpp's default would pick them (integrated ones only where
    there is no discrete one), to offload next to the remote devices."""
    handles = _gpu_handles() or ()
    discrete = [d for d, kind in handles if kind == _GPU_DEVICE_TYPES[0]]
    return discrete or [d for d, kind in handles if kind == _GPU_DEVICE_TYPES[1]]


def _on_ggml_abort(message: bytes | None) -> None:
    """ggml's last words before abort(): its message, then which RPC server hung up (its
    own "Remote RPC server crashed" names none). abort() follows: nothing here can stop it."""
    text = (message or b"").decode("utf-8", errors="replace")
    os.write(2, f"{text}\n{rpc.describe_lost()}".encode())


_ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_ABORT_HOOK = _ABORT_CALLBACK(_on_ggml_abort)  # kept: ggml holds only the pointer


@functools.cache
def _watch_aborts() -> None:
    try:
        setter = C._lib.ggml_set_abort_callback
    except AttributeError:
        return
    setter.restype, setter.argtypes = ctypes.c_void_p, [_ABORT_CALLBACK]
    setter(_ABORT_HOOK)


def cpu_cores() -> int:
    """The CPUs this process may run on (its affinity, where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """All CPUs this process may use, capped: past ~8 threads decode stops scaling."""
    return max(1, min(8, cpu_cores()))


def warn_oversubscribed(model: Path, threads: int) -> None:
    """More threads than cores make llama.cpp's threads wait on each other at every step
    (--threads 1000 ran 16 times slower) with no error: say so."""
    cores = cpu_cores()
    if threads > cores:
        _log.warning("%s: %d threads, but this process may use %d CPU cores: threads "
                     "beyond them wait on each other and decoding can be many times "
                     "slower; use at most %d", model.name, threads, cores, cores)
