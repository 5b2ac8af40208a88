"""More threads than this process's CPU cores run many times slower with no error: a context
made so warns, naming the core count, whether the CLI's --threads or a library's n_threads
asked for it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from svip_local import Engine, native
from svip_local.cli import main

CORES = native.cpu_cores()

# (n_threads, n_threads_batch, warned about): None is the default (default_threads()).
CASES = [
    ("default", None, None, None),
    ("as many as the cores", CORES, None, None),
    ("one more than the cores", CORES + 1, None, CORES + 1),
    ("the batch's threads above", 1, CORES + 1, CORES + 1),
    ("a thousand", 1000, None, 1000),
]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "svip_local.native.devices" and r.levelno == logging.WARNING]


@pytest.mark.parametrize(("threads", "batch", "warned"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_context_warns_above_the_cores(tiny_target: Path, caplog: pytest.LogCaptureFixture,
                                         threads: int | None, batch: int | None,
                                         warned: int | None) -> None:
    with native.Model(tiny_target) as model:
        native.Context(model, n_ctx=64, n_threads=threads, n_threads_batch=batch)
    if warned is None:
        assert warnings_of(caplog) == []
    else:
        assert warnings_of(caplog) == [
            f"{tiny_target.name}: {warned} threads, but this process may use {CORES} CPU "
            "cores: threads beyond them wait on each other and decoding can be many times "
            f"slower; use at most {CORES}"]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_cores_are_the_affinity_where_there_is_one() -> None:
    assert CORES == len(os.sched_getaffinity(0)) >= 1
    assert native.default_threads() == min(8, CORES)


def test_the_library_and_the_cli_both_warn(tiny_target: Path, tiny_draft_noisy: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=64, n_threads=CORES + 1, policy="none"):
        pass
    assert [w.split(":")[0] for w in warnings_of(caplog)] == [tiny_target.name,
                                                              tiny_draft_noisy.name]
    caplog.clear()
    assert main(["generate", "--target", str(tiny_target), "--prompt", "Hello",
                 "--max-tokens", "1", "--policy", "none", "--threads", str(CORES + 1)]) == 0
    assert [f"{CORES} CPU cores" in w for w in warnings_of(caplog)] == [True]
