"""A stand-in for llama.cpp's peer binary: what `peer_runner.run_peer` returns, at once."""

from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace
from typing import Any

from svip_local.bench.peer_runner import PeerArgs


def fake_runner(calls: list[dict[str, Any]]) -> SimpleNamespace:
    def run_peer(args: PeerArgs, prompt: str) -> dict[str, Any]:
        calls.append({"prompt": prompt, **asdict(args)})
        return {"n_generated": 64, "total_s": 8.0 / min(args.n_max, 3), "decode_s": 7.0,
                "prefill_s": 1.0, "drafted": 40, "accepted": 30, "verify_rounds": 34}

    return SimpleNamespace(run_peer=run_peer, default_binary=lambda: "unused")
