"""Ctrl-C while models load or contexts are made. Python runs a signal's handler in the main
thread's next Python code, and during llama.cpp's calls that is one of its callbacks (where a
KeyboardInterrupt is lost): so the handler only records it there, the load is abandoned and
KeyboardInterrupt raised once llama.cpp returns. Other threads and other handlers are left as
they are."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from svip_local import native
from svip_local.native.log import _Interrupt, log as llama_log
from tests.support.sigint import interrupt_at, start_up_seconds
from tests.support.tiny_models import write_tiny_model

# -- in this process: the signal raised from inside llama.cpp's log callback ----------------


class _OnLine(logging.Handler):
    """Runs `action` once, at the first line of llama.cpp's log that holds `needle`."""

    def __init__(self, needle: str, action: Callable[[], object]) -> None:
        super().__init__()
        self.needle, self.action, self.fired = needle, action, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.fired and self.needle in record.getMessage():
            self.fired = True
            self.action()


@pytest.fixture
def on_llama_line() -> Iterator[Callable[[str, Callable[[], object]], _OnLine]]:
    """Hook an action on a line of llama.cpp's log (its whole log on, for the test)."""
    handlers: list[_OnLine] = []
    level = llama_log.level

    def hook(needle: str, action: Callable[[], object]) -> _OnLine:
        handler = _OnLine(needle, action)
        handlers.append(handler)
        llama_log.addHandler(handler)
        return handler

    llama_log.setLevel(logging.DEBUG)
    try:
        yield hook
    finally:
        llama_log.setLevel(level)
        for handler in handlers:
            llama_log.removeHandler(handler)


@pytest.fixture
def sigint_handler() -> Iterator[Callable[[object], None]]:
    """Set SIGINT's handler for the test (Python's default to start with); restored after."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield lambda handler: signal.signal(signal.SIGINT, handler)  # type: ignore[arg-type]
    finally:
        signal.signal(signal.SIGINT, before)


def ctrl_c() -> None:
    signal.raise_signal(signal.SIGINT)


LOAD_LINE = "create_tensor: loading tensor"  # in the load, before its data
CONTEXT_LINE = "llama_context: constructing llama_context"


def test_ctrl_c_in_a_load_abandons_it_and_raises(tiny_target: Path, on_llama_line,
                                                 sigint_handler) -> None:
    cancelled = on_llama_line("cancelled model load", lambda: None)
    hook = on_llama_line(LOAD_LINE, ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        native.Model(tiny_target)
    assert hook.fired and cancelled.fired  # the progress callback stopped llama.cpp
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not _Interrupt.pending
    with native.Model(tiny_target) as model:  # nothing left over
        assert model.n_vocab > 0


def test_ctrl_c_in_a_context_creation_frees_it_and_raises(tiny_target: Path, on_llama_line,
                                                          sigint_handler) -> None:
    with native.Model(tiny_target) as model:
        hook = on_llama_line(CONTEXT_LINE, ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            native.Context(model, n_ctx=64)
        assert hook.fired
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with native.Context(model, n_ctx=64) as ctx:
            ctx.decode([1, 2, 3])


def test_a_load_in_a_worker_thread_leaves_the_handler_alone(tiny_target: Path, on_llama_line,
                                                            sigint_handler) -> None:
    seen: list[object] = []
    on_llama_line(LOAD_LINE, lambda: seen.append(signal.getsignal(signal.SIGINT)))
    loaded: list[int] = []

    def load() -> None:
        with native.Model(tiny_target) as model:
            loaded.append(model.n_vocab)
            native.Context(model, n_ctx=64).close()

    worker = threading.Thread(target=load)
    worker.start()
    worker.join()
    assert seen == [signal.default_int_handler] and loaded


@pytest.mark.parametrize("handler", ["ignored", "an application's own"])
def test_another_handler_is_left_as_it_is(tiny_target: Path, on_llama_line, sigint_handler,
                                          handler: str) -> None:
    calls: list[int] = []
    own = signal.SIG_IGN if handler == "ignored" else lambda signum, _frame: calls.append(signum)
    sigint_handler(own)
    hook = on_llama_line(LOAD_LINE, ctrl_c)
    with native.Model(tiny_target) as model:  # loads: nothing asked it to stop
        native.Context(model, n_ctx=64).close()
    assert hook.fired and signal.getsignal(signal.SIGINT) is own
    assert calls == ([] if handler == "ignored" else [signal.SIGINT])


# -- a real Ctrl-C, from outside, at many points of `svip-local generate`'s start-up ----------

LOAD_TRIES, PROBE_TRIES = 8, 2


@pytest.fixture(scope="session")
def deep_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """llama.cpp's deepest model (512 layers is its limit), narrow: its ~4500 tensors take
    loading and context creation a few hundred milliseconds, mostly inside llama.cpp and its
    log callback."""
    return write_tiny_model(tmp_path_factory.mktemp("deep") / "deep.gguf", n_layer=500,
                            n_embd=32, n_ff=32)


def test_ctrl_c_anywhere_in_the_start_up_exits_130(deep_model: Path) -> None:
    """Most tries land in the loads and contexts (half were lost there before), two in the
    probe. tests/real_pair does the same with the real pair."""
    pair = ["--target", str(deep_model), "--draft", str(deep_model), "--threads", "1"]
    loads = start_up_seconds([*pair, "--no-probe"])  # both loads and contexts
    whole = max(start_up_seconds(pair), loads)  # and the probe's decodes
    delays = [loads * i / LOAD_TRIES for i in range(LOAD_TRIES)]
    delays += [loads + (whole - loads) * (i + 1) / (PROBE_TRIES + 1) for i in range(PROBE_TRIES)]
    outcomes = interrupt_at(delays, pair)
    assert [o[1:3] for o in outcomes] == [(130, False)] * len(delays), outcomes
