"""A bounded load test on loopback: scripts/load_test_server.py (a few clients, a few seconds)
against the server running in this process, so the script can watch this process's RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from svip_local.engine import Engine
from svip_local.server import create_app
from tests.support.server import running_server

ROOT = Path(__file__).resolve().parents[2]
CLIENTS, SECONDS = 6, 3


def test_load_loses_nothing_and_memory_stays_flat(tiny_target: Path,
                                                  tiny_draft_noisy: Path) -> None:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, policy="svip:0.3") as engine, \
            running_server(create_app(engine, model_name="tiny", max_queue=2)) as url:
        out = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "load_test_server.py"), "--url", url,
             "--clients", str(CLIENTS), "--seconds", str(SECONDS), "--abort-every", "4",
             "--pid", str(os.getpid())],
            capture_output=True, text=True, timeout=120, cwd=ROOT)
    report = json.loads(out.stdout)
    print(json.dumps(report))  # the numbers, for `pytest -s`
    assert out.returncode == 0, report["samples"] or out.stderr
    outcomes = sum(report[k] for k in ("ok", "busy", "aborted", "errors", "lost"))
    assert report["requests"] == outcomes  # every request accounted for
    assert report["errors"] == 0 and report["lost"] == 0, report["samples"]
    assert report["ok"] >= CLIENTS and report["aborted"] > 0
    assert report["drained"] and report["final_ok"]
    assert report["wall_s"] < SECONDS + 10  # stopped by itself
    assert report["rss_after_mib"] - report["rss_before_mib"] < 16  # MiB: flat, not leaking
