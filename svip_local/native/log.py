"""llama.cpp's callbacks into Python: its log, as whole lines on a Python logger, and Ctrl-C
during a long native call, recorded and raised once llama.cpp returns (a KeyboardInterrupt
raised inside a callback would be lost). The lowest module of the package: the log bridge is
set and the backend started when it loads, before any other module calls llama.cpp."""

from __future__ import annotations

import _thread
import ctypes
import logging
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import llama_cpp.llama_cpp as C

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
    KeyboardInterrupt is raised once llama.cpp has returned (`interruptible`)."""

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


def interruptible(make: Callable[[], Any], free: Callable[[Any], object]) -> Any:
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
def load_progress(_progress: float, _user_data: ctypes.c_void_p) -> bool:
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


def consume_recent_errors() -> str:
    """llama.cpp's warnings and errors since the last call, joined: the detail of a failure."""
    text = "; ".join(_recent_errors)
    _recent_errors.clear()
    return text


C.llama_log_set(_log_callback, ctypes.c_void_p(0))
C.llama_backend_init()
