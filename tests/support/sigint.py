"""Ctrl-C sent from outside to `svip-local generate`, as a terminal sends it, at chosen times
of its start-up: what exit status each try had, and whether a KeyboardInterrupt was lost in
a callback ("Exception ignored")."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence

# The child: SIGINT as a terminal's shell leaves it (a test runner in the background may have
# it ignored), svip-local imported, then the clock starts.
CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from svip_local import cli, engine, native
print("ready", flush=True)
sys.exit(cli.main(sys.argv[1:]))
"""
PROMPT = "Write a long story."


def start(args: Sequence[str]) -> tuple[subprocess.Popen[str], float]:
    """`svip-local generate ARGS` with a long story's prompt, once svip-local is imported."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "generate", "--prompt", PROMPT,
                             "--ignore-eos", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc, time.monotonic()


def start_up_seconds(args: Sequence[str]) -> float:
    """From "ready" to the end of a one-token reply, untouched."""
    proc, t0 = start([*args, "--max-tokens", "1"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return time.monotonic() - t0


def interrupt_at(delays: Sequence[float], args: Sequence[str],
                 ) -> list[tuple[float, int, bool, str]]:
    """One try per delay: (delay, exit status, "Exception ignored" seen, stderr's end). A
    child that ended before its signal makes the delays wrong, not the child: it fails here."""
    outcomes = []
    for delay in delays:
        proc, t0 = start([*args, "--max-tokens", "400"])
        time.sleep(max(0.0, t0 + delay - time.monotonic()))
        assert proc.poll() is None, f"the child ended before its Ctrl-C at {delay:.2f} s"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
        outcomes.append((round(delay, 2), proc.returncode, "Exception ignored" in err,
                         err[-300:]))
    return outcomes
