"""A stand-in for llama.cpp's peer binary: what `peer_runner.run_peer` returns, at once."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any


def fake_runner(calls: list[dict[str, Any]]) -> SimpleNamespace:
    def run_peer(binary: Path, target: Path, draft: Path, prompt: str,
                 **kw: object) -> dict[str, Any]:
        calls.append({"prompt": prompt, **kw})
        n_max = int(kw["n_max"])  # type: ignore[call-overload]
        return {"n_generated": 64, "total_s": 8.0 / min(n_max, 3), "decode_s": 7.0,
                "prefill_s": 1.0, "drafted": 40, "accepted": 30, "verify_rounds": 34}

    return SimpleNamespace(run_peer=run_peer, default_binary=lambda: "unused")
