"""The one module that touches llama.cpp (through llama-cpp-python's low-level ctypes bindings).

Everything else in svip-local sees three small classes: `Model` (weights + vocabulary),
`Context` (a KV cache with the exact list of tokens it holds, and one reusable batch) and
`TextStream` (incremental detokenization). Native handles are freed deterministically through
`ExitStack`s, contexts before their model.
"""

from __future__ import annotations

import _thread
import codecs
import ctypes
import functools
import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as C
import numpy as np
import numpy.typing as npt
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from svip_local import rpc
from svip_local.errors import (
    ContextFullError,
    DecodeError,
    EngineClosedError,
    InvalidRequestError,
    ModelFileError,
    RemoteServerError,
    RpcUnavailableError,
)

_svip_log = logging.getLogger(__name__)  # svip-local's own, beside llama.cpp's below
log = logging.getLogger("svip_local.llama_cpp")
# Quiet by default: llama.cpp's load chatter is INFO, and only its errors reach the user
# unless they raise the level (the CLI's -vv does).
log.setLevel(logging.ERROR)

# ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continue previous line).
# llama-cpp-python 0.3.36 ships a stale table that swallows real errors; this one is ggml.h's.
_GGML_TO_LOGGING = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING,
                    4: logging.ERROR}
_recent_errors: deque[str] = deque(maxlen=8)
_log_lock = threading.Lock()


class _LogLine:
    """The line llama.cpp is sending, in fragments, and its level."""

    level = logging.INFO
    text = ""


class _Interrupt:
    """A Ctrl-C that arrived during a long native call (a model load, a context's creation).

    Python runs a signal's handler in the main thread's next Python code, and while llama.cpp
    runs that is one of its callbacks, at its entry: a KeyboardInterrupt raised there is lost
    (ctypes prints "Exception ignored" and llama.cpp carries on). So during such calls the
    handler only records it, a load's progress callback then asks llama.cpp to stop, and
    KeyboardInterrupt is raised once llama.cpp has returned (`_interruptible`)."""

    pending = False

    @staticmethod
    def record(_signum: int, _frame: object) -> None:
        _Interrupt.pending = True


@contextmanager
def _interrupts_recorded() -> Iterator[bool]:
    """Ctrl-C recorded in `_Interrupt.pending`, not raised, for the block; yields whether it is.
    Only the main thread can set a handler (the TUI and the server load in workers: Ctrl-C
    goes to the main thread there anyway), and one other than Python's default (SIGINT
    ignored, an application's own, or this one, already recording) is left as it is."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield False
        return
    _Interrupt.pending = False
    previous = signal.signal(signal.SIGINT, _Interrupt.record)
    try:
        yield True
    finally:
        signal.signal(signal.SIGINT, previous)


def _interruptible(make: Callable[[], Any], free: Callable[[Any], object]) -> Any:
    """`make()`, a native constructor, with Ctrl-C held until it returns: then what it made is
    freed and KeyboardInterrupt raised. (A Ctrl-C after the handler is restored raises
    at once, and is freed here too.)"""
    made = None
    try:
        with _interrupts_recorded() as recorded:
            made = make()
        if recorded and _Interrupt.pending:
            _Interrupt.pending = False
            raise KeyboardInterrupt
    except BaseException:
        if made:
            free(made)
        raise
    return made


@C.llama_log_callback  # type: ignore[untyped-decorator]  # llama_cpp ships no types
def _log_callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    try:
        _log_line(level, text)
    except KeyboardInterrupt:  # ctypes would drop it: post it again, for Python code to raise
        _thread.interrupt_main()


@C.llama_progress_callback  # type: ignore[untyped-decorator]
def _load_progress(_progress: float, _user_data: ctypes.c_void_p) -> bool:
    # False: llama.cpp abandons the load. Only the main thread's loads record Ctrl-C.
    return not (_Interrupt.pending and threading.current_thread() is threading.main_thread())


def _log_line(level: int, text: bytes) -> None:
    # llama.cpp sends fragments (CONT) and lines with their own '\n': assemble whole lines.
    with _log_lock:
        if level != 5:
            _LogLine.level = _GGML_TO_LOGGING.get(level, logging.INFO)
        _LogLine.text += text.decode("utf-8", errors="replace")
        if not _LogLine.text.endswith("\n"):
            return
        line, _LogLine.text = _LogLine.text.rstrip(), ""
        lvl = _LogLine.level
    if lvl >= logging.WARNING:
        _recent_errors.append(line)
    log.log(lvl, "%s", line)


C.llama_log_set(_log_callback, ctypes.c_void_p(0))
C.llama_backend_init()


# -- the CPU's extra buffer types ----------------------------------------------------------------
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


def _consume_recent_errors() -> str:
    text = "; ".join(_recent_errors)
    _recent_errors.clear()
    return text


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
def _rpc_add_server() -> Any:
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


def _rpc_devices(endpoint: str) -> list[int]:
    """The devices `endpoint` lends (llama.cpp connects to it here)."""
    reg = _rpc_add_server()(endpoint.encode())
    n = C._lib.ggml_backend_reg_dev_count(reg) if reg else 0
    if not n:
        raise RemoteServerError(endpoint, "lends no device")
    return [int(C._lib.ggml_backend_reg_dev_get(reg, i)) for i in range(n)]


def _local_gpu_devices() -> list[int]:
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


def system_info() -> str:
    return str(C.llama_print_system_info().decode("utf-8", errors="replace")).strip()


def cpu_cores() -> int:
    """The CPUs this process may run on (its affinity, where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """All CPUs this process may use, capped: past ~8 threads decode stops scaling."""
    return max(1, min(8, cpu_cores()))


def _warn_oversubscribed(model: Path, threads: int) -> None:
    """More threads than cores make llama.cpp's threads wait on each other at every step
    (--threads 1000 ran 16 times slower) with no error: say so."""
    cores = cpu_cores()
    if threads > cores:
        _svip_log.warning("%s: %d threads, but this process may use %d CPU cores: threads "
                          "beyond them wait on each other and decoding can be many times "
                          "slower; use at most %d", model.name, threads, cores, cores)


def _check_gguf_file(path: Path) -> None:
    """Fail with a specific message before llama.cpp sees a file it would reject vaguely."""
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"model path is not a file: {path}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror}") from exc
    if magic != b"GGUF":
        raise ModelFileError(f"not a GGUF file (bad magic {magic!r}): {path}")


class VocabType(Enum):
    NONE = 0
    SPM = 1
    BPE = 2
    WPM = 3
    UGM = 4
    RWKV = 5
    PLAMO2 = 6
    TEST = 7


@dataclass(frozen=True)
class SpecialTokens:
    bos: int
    eos: int
    eot: int
    add_bos: bool
    add_eos: bool


class Model:
    """A loaded GGUF: weights (possibly offloaded) and its vocabulary."""

    def __init__(self, path: str | os.PathLike[str], *, n_gpu_layers: int = -1,
                 vocab_only: bool = False, rpc_servers: Sequence[str] = ()) -> None:
        """`rpc_servers` ("HOST:PORT"): split the offloaded layers across those servers'
        devices, first, and this machine's GPUs, as llama.cpp's `--rpc` does."""
        self.path = Path(path)
        _check_gguf_file(self.path)
        params = C.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        self.rpc_servers = tuple(rpc_servers)
        peers: dict[str, tuple[str, int]] = {}
        if self.rpc_servers:
            _rpc_add_server()  # a build without RPC says so before anything connects
            # llama.cpp aborts the process on a server that is not there: try each first.
            peers = {e: rpc.handshake(e) for e in self.rpc_servers}
            devices = [d for e in self.rpc_servers for d in _rpc_devices(e)]
            devices += _local_gpu_devices()
            self._devices = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
            params.devices = ctypes.addressof(self._devices)
        params.vocab_only = vocab_only
        params.use_extra_bufts = use_extra_buffer_types()  # see EXTRA_BUFFER_TYPES
        params.progress_callback = _load_progress
        _consume_recent_errors()
        # Ctrl-C while loading: stop here, nothing kept.
        ptr = _interruptible(lambda: C.llama_model_load_from_file(str(self.path).encode(),
                                                                  params), C.llama_model_free)
        if not ptr:
            detail = _consume_recent_errors() or "no detail from llama.cpp"
            raise ModelFileError(f"llama.cpp could not load {self.path}: {detail}")
        self._stack = ExitStack()
        self._stack.callback(self._mark_closed)
        self._stack.callback(C.llama_model_free, ptr)
        self.closed = False
        self.ptr = ptr
        # The connections llama.cpp now holds to the servers, watched between decodes.
        self.links = rpc.Links.find(peers) if peers else None
        self.n_gpu_layers = n_gpu_layers
        self.vocab = C.llama_model_get_vocab(ptr)
        self.n_vocab: int = C.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train: int = C.llama_model_n_ctx_train(ptr)
        self.n_layer: int = C.llama_model_n_layer(ptr)
        self.n_embd: int = C.llama_model_n_embd(ptr)  # width of the last hidden state
        self.vocab_type = VocabType(C.llama_vocab_type(self.vocab))
        self.special = SpecialTokens(
            bos=C.llama_vocab_bos(self.vocab), eos=C.llama_vocab_eos(self.vocab),
            eot=C.llama_vocab_eot(self.vocab), add_bos=bool(C.llama_vocab_get_add_bos(self.vocab)),
            add_eos=bool(C.llama_vocab_get_add_eos(self.vocab)),
        )
        self._pieces: dict[int, bytes] = {}

    def close(self) -> None:
        if self.links is not None:
            self.links.forget()
            if self.links.lost is not None:
                # Freeing remote buffers writes to the dead server, and llama.cpp aborts on
                # that: the native model and its contexts are left behind, unreachable.
                self._stack.pop_all()
                self._mark_closed()
                return
        self._stack.close()

    def _mark_closed(self) -> None:
        self.closed = True

    def check_remote(self) -> None:
        """Raise `RemoteServerError` if a server this model is split across hung up: before
        llama.cpp writes to it (which would abort the process)."""
        if self.links is not None:
            self.links.check()

    def check_open(self) -> None:
        """Raise instead of letting llama.cpp touch freed memory (which aborts the process)."""
        if self.closed:
            raise EngineClosedError(f"the model {self.path.name} is closed")

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_close(self, callback: object) -> None:
        """Run `callback` before the model is freed (contexts must go first)."""
        self._stack.callback(callback)  # type: ignore[arg-type]

    def meta(self, key: str) -> str | None:
        self.check_open()
        buf = ctypes.create_string_buffer(4096)
        n = C.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            C.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    @property
    def name(self) -> str:
        return self.meta("general.name") or self.path.name

    def chat_template(self) -> str | None:
        self.check_open()
        raw = C.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8") if raw else None

    def tokenize(self, text: str, *, add_special: bool = True,
                 parse_special: bool = False) -> list[int]:
        self.check_open()
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates: bytes that were not UTF-8
            raise InvalidRequestError(
                f"the text is not valid Unicode at character {exc.start} ({exc.reason}): "
                "undecodable bytes reached it; decode them first (e.g. errors='replace')"
            ) from exc
        n = C.llama_tokenize(self.vocab, data, len(data), None, 0, add_special, parse_special)
        size = -n if n < 0 else n
        buf = (C.llama_token * max(size, 1))()
        n = C.llama_tokenize(self.vocab, data, len(data), buf, size, add_special, parse_special)
        if n < 0:
            raise ValueError(f"tokenization failed ({n}) for text of {len(data)} bytes")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token adds to the text (empty for control tokens); may be partial UTF-8."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        out = buf.raw[:n]
        self._pieces[token] = out
        return out

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> bytes:
        """The raw vocabulary entry (e.g. with BPE 'Ġ' markers): what pair checks compare."""
        self.check_open()
        return C.llama_vocab_get_text(self.vocab, token) or b""

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self.vocab, token))


def render_chat_template(template: str, messages: Sequence[dict[str, str]], *, bos_token: str,
                         eos_token: str, add_generation_prompt: bool = True) -> str:
    """Render a GGUF's Jinja chat template exactly as llama-cpp-python does (sandboxed jinja2,
    Transformers-compatible `tojson`, `{% generation %}` tags ignored)."""
    formatter = Jinja2ChatFormatter(template, eos_token=eos_token, bos_token=bos_token,
                                    add_generation_prompt=add_generation_prompt)
    return formatter(messages=list(messages)).prompt  # type: ignore[arg-type]


def apply_builtin_chat_template(name: str, messages: Sequence[dict[str, str]], *,
                                add_generation_prompt: bool = True) -> str:
    """llama.cpp's own C++ templates ("chatml", "llama3", ...), for GGUFs without Jinja."""
    arr = (C.llama_chat_message * len(messages))()
    keep = []  # the C structs borrow these bytes
    for i, m in enumerate(messages):
        role, content = m["role"].encode(), m["content"].encode()
        keep += [role, content]
        arr[i].role, arr[i].content = role, content
    size = 1024 + sum(len(b) for b in keep) * 2
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = C.llama_chat_apply_template(name.encode(), arr, len(messages),
                                        add_generation_prompt, buf, size)
        if n < 0:
            raise ValueError(f"llama.cpp has no built-in chat template named {name!r}")
        if n <= size:
            return buf.raw[:n].decode("utf-8")
        size = n
    raise ValueError("chat template output kept growing")


class TextStream:
    """Turns tokens into text as they arrive, holding back incomplete UTF-8 sequences."""

    def __init__(self, model: Model) -> None:
        self._model = model
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._decoder.decode(self._model.piece(token))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common prefix of a and b, at most `limit`."""
    n = min(len(a), len(b), limit)
    if list(a[:n]) == list(b[:n]):
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


# With hidden states on, a batch of at least this many tokens, of which only the last needs an
# output, is decoded as two (the rest without them): one more decode call costs less than the
# LM head on every extra row from about here on a CPU.
_HIDDEN_SPLIT = 8

MAX_BRANCHES = 64  # sequences a tree-verifying context is made for (llama.cpp allows 256)


class Outputs(Enum):
    NONE = 0
    LAST = 1
    ALL = 2


_DECODE_ERRORS = {
    2: "decoding was aborted",
    -1: "invalid batch (bad token id or positions out of step with the KV cache)",
    -2: "could not allocate memory for the batch",
    -3: "graph computation failed",
}


class Context:
    """A llama.cpp context on one sequence, which knows exactly which tokens its KV cache holds.

    `tokens[i]` is the token at KV position i. Keeping that list next to the cache is what lets
    the engine reuse prompt prefixes and trim rejected draft tokens with one `seq_rm`.

    With `branches` > 1 it also verifies token trees (`decode_tree`): between rounds the cache
    still holds sequence 0 alone, and during one the tree's branches are sequences 0..b-1 of
    a unified cache (`kv_unified`: one cell pool shared by all sequences, so the shared prefix
    is only tagged with every branch's id, never copied, and no sequence is limited to
    n_ctx / branches cells).
    """

    def __init__(self, model: Model, *, n_ctx: int, n_batch: int = 512, n_ubatch: int = 512,
                 n_threads: int | None = None, n_threads_batch: int | None = None,
                 flash_attn: bool | None = None, branches: int = 1) -> None:
        self.model = model
        threads = n_threads or default_threads()
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_ubatch, n_batch)
        if not 1 <= branches <= MAX_BRANCHES:
            raise ValueError(f"branches must be 1..{MAX_BRANCHES}, got {branches}")
        params.n_seq_max = branches
        params.kv_unified = branches > 1
        params.n_threads = threads
        params.n_threads_batch = n_threads_batch or threads
        _warn_oversubscribed(model.path, max(params.n_threads, params.n_threads_batch))
        params.flash_attn_type = {None: C.LLAMA_FLASH_ATTN_TYPE_AUTO,
                                  True: C.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                                  False: C.LLAMA_FLASH_ATTN_TYPE_DISABLED}[flash_attn]
        params.no_perf = True
        # Per-token last hidden states (`hidden`), when a policy turns them on: no pooling.
        params.pooling_type = C.LLAMA_POOLING_TYPE_NONE
        model.check_open()
        _consume_recent_errors()
        ptr = _interruptible(lambda: C.llama_init_from_model(model.ptr, params), C.llama_free)
        if not ptr:
            detail = _consume_recent_errors() or "no detail from llama.cpp"
            raise ModelFileError(f"llama.cpp could not create a context for {model.path}: {detail}")
        self._stack = ExitStack()
        # Freed in reverse order of registration: the batch, then the context. The model's own
        # stack closes this one first, because the native context must go before its model.
        self._stack.callback(C.llama_free, ptr)
        self.ptr = ptr
        self.n_ctx: int = C.llama_n_ctx(ptr)
        self.n_batch: int = C.llama_n_batch(ptr)
        self._mem = C.llama_get_memory(ptr)
        self.branches = branches
        self._batch = C.llama_batch_init(self.n_batch, 0, branches)
        self._stack.callback(C.llama_batch_free, self._batch)
        n = self.n_batch
        self._tok = np.ctypeslib.as_array(self._batch.token, shape=(n,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(n,))
        self._out = np.ctypeslib.as_array(self._batch.logits, shape=(n,))
        self._n_seq = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(n,))
        self._n_seq[:] = 1
        # Row i's sequence ids as a numpy view (a tree round writes them in bulk).
        self._seq_ids = [np.ctypeslib.as_array(self._batch.seq_id[i], shape=(branches,))
                         for i in range(n)]
        for ids in self._seq_ids:
            ids[0] = 0
        self._n_vocab = model.n_vocab
        self._n_embd = model.n_embd
        self.embeddings = False  # whether decodes also output last hidden states
        self.tokens: list[int] = []
        self.n_decoded = 0  # tokens decoded over the context's life: prefix reuse shows here
        self._closed = False
        model.on_close(self.close)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stack.close()

    @property
    def closed(self) -> bool:
        """Closed itself, or its model was (a model left behind by a lost server keeps it)."""
        return self._closed or self.model.closed

    def check_open(self) -> None:
        if self.closed:
            raise EngineClosedError(f"the context of {self.model.path.name} is closed")

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def decode(self, tokens: Sequence[int], outputs: Outputs = Outputs.LAST) -> None:
        """Append `tokens` at the end of the cache, in chunks of n_batch.

        With LAST only the final token gets logits; ALL (one chunk at most) gives every row.
        """
        self.check_open()
        if not tokens:
            return
        if self.embeddings and outputs is not Outputs.ALL and (
                outputs is Outputs.NONE or len(tokens) >= _HIDDEN_SPLIT):
            # With hidden states on, llama.cpp outputs every row of a batch (logits too): a
            # prompt's catch-up would run the LM head on every token. Decode the rows that
            # need nothing with them off, and the last one (if wanted) with them on.
            head = tokens if outputs is Outputs.NONE else tokens[:-1]
            self.output_hidden(False)
            try:
                self.decode(head, Outputs.NONE)
            finally:
                self.output_hidden(True)
            if outputs is Outputs.LAST:
                self.decode(tokens[-1:], Outputs.LAST)
            return
        if outputs is Outputs.ALL and len(tokens) > self.n_batch:
            raise ValueError(f"{len(tokens)} tokens with all logits exceed n_batch {self.n_batch}")
        if len(self.tokens) + len(tokens) > self.n_ctx:
            raise ContextFullError(
                f"the context holds {self.n_ctx} tokens; {len(self.tokens)} are used and "
                f"{len(tokens)} more do not fit")
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            n = len(chunk)
            p0 = len(self.tokens)
            self._tok[:n] = chunk
            self._pos[:n] = np.arange(p0, p0 + n, dtype=np.int32)
            self._out[:n] = 1 if outputs is Outputs.ALL else 0
            if outputs is Outputs.LAST and start + n == len(tokens):
                self._out[n - 1] = 1
            self._batch.n_tokens = n
            self.model.check_remote()
            rc = C.llama_decode(self.ptr, self._batch)
            if rc != 0:
                self.ensure_consistent()
                if rc == 1:
                    raise ContextFullError("no KV cache slot for the batch (context full)")
                raise DecodeError(f"llama_decode returned {rc}: "
                                  f"{_DECODE_ERRORS.get(rc, 'unknown error')}")
            self.tokens.extend(chunk)
            self.n_decoded += n

    def synchronize(self) -> None:
        """Wait until the last decode has run. On asynchronous backends (GPUs, RPC servers)
        `llama_decode` returns once the work is queued and the wait falls on the next read
        of its logits; a timer that reads none must wait here, or each time it takes is
        partly the previous decode's."""
        self.check_open()
        C.llama_synchronize(self.ptr)

    def logits(self, index: int = -1) -> npt.NDArray[np.float32]:
        """Row `index` of the last batch (negative: from the end) as a zero-copy view.

        The view is only valid until the next decode: copy what must outlive it.
        """
        self.check_open()
        ptr = C.llama_get_logits_ith(self.ptr, index)
        if not ptr:
            raise DecodeError(f"no logits for batch row {index}")
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    def output_hidden(self, on: bool) -> None:
        """Make the following decodes also output each output row's last hidden state (the
        final norm's output, what the LM head reads) for `hidden`. Off by default: only a
        policy that reads them (`specdec`) turns it on. llama.cpp then outputs every row of
        a batch, so `decode` splits off what needs no output."""
        if on != self.embeddings:
            self.check_open()
            C.llama_set_embeddings(self.ptr, on)
            self.embeddings = on

    def hidden(self, index: int = -1) -> npt.NDArray[np.float32]:
        """Row `index`'s last hidden state of the last batch (decoded with `output_hidden`
        on), as a zero-copy view valid until the next decode."""
        self.check_open()
        ptr = C.llama_get_embeddings_ith(self.ptr, index) if self.embeddings else None
        if not ptr:
            raise DecodeError(f"no hidden state for batch row {index} (output_hidden is "
                              f"{'on' if self.embeddings else 'off'})")
        return np.ctypeslib.as_array(ptr, shape=(self._n_embd,))

    def truncate(self, n_keep: int) -> None:
        """Drop every cached token from position n_keep on (rejected drafts, edited turns)."""
        self.check_open()
        if n_keep >= len(self.tokens):
            return
        if not C.llama_memory_seq_rm(self._mem, 0, n_keep, -1):
            # Only recurrent models refuse partial removal: start over rather than corrupt.
            C.llama_memory_clear(self._mem, True)
            self.tokens.clear()
            return
        del self.tokens[n_keep:]

    def decode_tree(self, tokens: Sequence[int], depths: Sequence[int],
                    seqs: Sequence[Sequence[int]], n_branches: int) -> None:
        """Decode a token tree after the cache in ONE batch, every row with logits.

        Row i is `tokens[i]` at position len(self.tokens) + depths[i], in the sequences
        `seqs[i]` (those of every branch through it; row 0, the root, lies on all of them).
        llama.cpp lets a row attend to the cells of its first sequence, so each row sees the
        prefix and its own ancestors only. Rows come parents first. `keep_branch` must follow:
        until then the cache holds the whole tree and `tokens` does not list it.
        """
        self.check_open()
        n = len(tokens)
        if n_branches > self.branches:
            raise ValueError(f"a tree of {n_branches} branches needs a context made for as "
                             f"many (this one: {self.branches})")
        if n > self.n_batch:
            raise ValueError(f"a tree of {n} rows exceeds n_batch {self.n_batch}")
        p0 = len(self.tokens)
        if p0 + n > self.n_ctx:
            raise ContextFullError(
                f"the context holds {self.n_ctx} tokens; {p0} are used and a tree of {n} "
                "more does not fit")
        self.model.check_remote()
        for b in range(1, n_branches):  # the prefix is every branch's (a tag, not a copy)
            C.llama_memory_seq_cp(self._mem, 0, b, -1, -1)
        self._tok[:n] = tokens
        self._pos[:n] = depths
        self._pos[:n] += p0
        self._out[:n] = 1
        for i, ids in enumerate(seqs):
            self._n_seq[i] = len(ids)
            self._seq_ids[i][: len(ids)] = ids
        self._batch.n_tokens = n
        rc = C.llama_decode(self.ptr, self._batch)
        self._n_seq[:n] = 1  # back to what `decode` assumes: one sequence, 0
        for i in range(n):
            self._seq_ids[i][0] = 0
        if rc != 0:
            self._drop_branches(p0)
            if rc == 1:
                raise ContextFullError("no KV cache slot for the tree (context full)")
            raise DecodeError(f"llama_decode returned {rc}: "
                              f"{_DECODE_ERRORS.get(rc, 'unknown error')}")
        self.n_decoded += n

    def keep_branch(self, branch: int, path: Sequence[int], n_branches: int) -> None:
        """After `decode_tree`: keep the prefix and `path` (the tree's root and the accepted
        tokens, all on `branch`) as sequence 0, and nothing else in any sequence."""
        self.check_open()
        p0 = len(self.tokens)
        if n_branches > 1:
            C.llama_memory_seq_keep(self._mem, branch)  # every cell off that branch goes
            if branch != 0:
                C.llama_memory_seq_cp(self._mem, branch, 0, -1, -1)
                C.llama_memory_seq_rm(self._mem, branch, -1, -1)
        C.llama_memory_seq_rm(self._mem, 0, p0 + len(path), -1)
        self.tokens.extend(path)

    def _drop_branches(self, p0: int) -> None:
        """Undo a failed tree: every sequence but 0 emptied, sequence 0 back to p0 cells."""
        for b in range(1, self.branches):
            C.llama_memory_seq_rm(self._mem, b, -1, -1)
        C.llama_memory_seq_rm(self._mem, 0, p0, -1)

    def seq_cells(self, seq_id: int) -> tuple[int, int]:
        """(lowest, highest) position sequence `seq_id` holds, (-1, -1) when it holds none:
        what tests check to see that a tree left nothing behind."""
        self.check_open()
        return (int(C.llama_memory_seq_pos_min(self._mem, seq_id)),
                int(C.llama_memory_seq_pos_max(self._mem, seq_id)))

    def keep_prefix(self, tokens: Sequence[int], limit: int) -> int:
        """Trim the cache to its longest common prefix with `tokens` (at most `limit`
        tokens) and return that length: what a new sequence can reuse of the cached one."""
        keep = common_prefix(self.tokens, tokens, limit)
        self.truncate(keep)
        return keep

    def clear(self) -> None:
        self.check_open()
        self.model.check_remote()  # clearing remote buffers writes to the servers
        C.llama_memory_clear(self._mem, True)
        self.tokens.clear()

    def pos_max(self) -> int:
        """Highest position in the KV cache (-1 when empty), straight from llama.cpp."""
        self.check_open()
        return int(C.llama_memory_seq_pos_max(self._mem, 0))

    def ensure_consistent(self) -> None:
        """Make `tokens` and the KV cache agree again after a failed or interrupted decode.

        Some ubatches of a failed batch may have landed; llama.cpp's own position is the truth.
        A closed context has nothing left to agree with.
        """
        if self.closed:
            return
        n = self.pos_max() + 1
        if n < len(self.tokens):
            del self.tokens[n:]
        elif n > len(self.tokens):
            C.llama_memory_seq_rm(self._mem, 0, len(self.tokens), -1)


def open_python_api_llama(path: str | Path, *, n_ctx: int, threads: int, n_gpu_layers: int,
                          lookup: tuple[int, int] | None) -> tuple[Any, dict[int, float]]:
    """llama-cpp-python's own high-level `Llama` (with `LlamaPromptLookupDecoding` when `lookup`
    gives its predicted tokens and n-gram size), for benchmarks that race it as a peer; and a
    logit bias that puts every end-of-generation token out of reach, since `create_completion`
    has no ignore-eos flag.

    With a draft model `Llama` keeps every position's logits, but it sizes that buffer by
    `logits_all` as passed: left False, a prompt longer than n_batch (512) fails in `Llama.eval`
    ("could not broadcast"), so it is passed True whenever there is a draft.
    """
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    draft = None if lookup is None else LlamaPromptLookupDecoding(
        num_pred_tokens=lookup[0], max_ngram_size=lookup[1])
    llm = Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                n_gpu_layers=n_gpu_layers, logits_all=draft is not None, draft_model=draft,
                verbose=False)
    vocab = llm._model.vocab
    banned = {t: -1e30 for t in range(llm.n_vocab()) if C.llama_vocab_is_eog(vocab, t)}
    return llm, banned
