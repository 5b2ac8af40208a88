"""llama.cpp's own speculative decoding (`llama-speculative-simple`) as a peer in a benchmark.

The binary is built by scripts/build_llama_tools.sh; `peer_runner` runs it and parses what it
prints. Peer runs are specs `llama.cpp:N_MAX:P_MIN` that the benchmark interleaves
with its own; their time is prefill + generation, like ours (model load excluded).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType

from svip_local.bench import peer_runner
from svip_local.bench.defaults import DEFAULT_GRID
from svip_local.bench.runner import BenchItem, RunRecord
from svip_local.errors import InvalidRequestError
from svip_local.native import use_extra_buffer_types

PREFIX = "llama.cpp:"
def spec(n_max: int, p_min: float) -> str:
    return f"{PREFIX}{n_max}:{p_min:g}"


def parse_spec(text: str) -> tuple[int, float]:
    n_max, _, p_min = text[len(PREFIX):].partition(":")
    return int(n_max), float(p_min or 0)


class Peer:
    """Runs `llama-speculative-simple` on the benchmark's files and prompts."""

    def __init__(self, target: str | Path, draft: str | Path, *, threads: int, n_ctx: int,
                 n_gpu_layers: int | None = None, binary: str | Path | None = None,
                 runner: ModuleType | None = None) -> None:
        self._runner = runner or peer_runner
        self.binary = Path(binary) if binary else Path(self._runner.default_binary())
        if not self.binary.is_file():
            raise InvalidRequestError(
                f"{self.binary} not found: build it with scripts/build_llama_tools.sh "
                "(or pass --peer-binary)")
        self.target, self.draft = Path(target), Path(draft)
        self.threads, self.n_ctx, self.n_gpu_layers = threads, n_ctx, n_gpu_layers
        # The same weight layout as svip_local: repacked for this CPU (native.EXTRA_BUFFER_TYPES)
        # unless SVIP_LOCAL_EXTRA_BUFTS=0; the binary itself is built without AMX where
        # svip_local leaves AMX out (scripts/build_llama_tools.sh).
        self._extra = [] if use_extra_buffer_types() else ["--no-repack"]

    def handles(self, name: str) -> bool:
        return name.startswith(PREFIX)

    def run(self, item: BenchItem, name: str, temperature: float, seed: int,
            repeat: int) -> RunRecord:
        n_max, p_min = parse_spec(name)
        extra = [*self._extra, *(["--ignore-eos"] if item.ignore_eos else [])]
        res = self._runner.run_peer(
            self.binary, self.target, self.draft, item.prompt.text, n_max=n_max, p_min=p_min,
            n_predict=item.max_tokens, threads=self.threads, ctx=self.n_ctx, temp=temperature,
            seed=seed, n_gpu_layers=self.n_gpu_layers, extra_args=extra)
        wall = res["total_s"] if res["total_s"] is not None else res["decode_s"]
        return RunRecord(item.suite, item.group, item.prompt.id, temperature, item.max_tokens,
                         name, f"llama.cpp n_max={n_max} p_min={p_min:g}", repeat,
                         res["n_generated"], wall, res["prefill_s"] or 0.0,
                         res["drafted"] or 0, res["accepted"] or 0,
                         rounds=res["verify_rounds"] or 0, finish="peer")


def sweep(peer: Peer, items: Sequence[BenchItem], grid: Iterable[tuple[int, float]] = DEFAULT_GRID,
          *, on_run: Callable[[], None] | None = None) -> tuple[str, list[dict[str, float | str]]]:
    """Greedy runs of every grid setting on `items`; the best setting by mean tokens/s."""
    table: list[dict[str, float | str]] = []
    for n_max, p_min in grid:
        name = spec(n_max, p_min)
        recs = []
        for item in items:
            recs.append(peer.run(item, name, 0.0, 0, 0))
            if on_run:
                on_run()
        table.append({"policy": name, "n_max": n_max, "p_min": p_min,
                      "mean_tps": statistics.fmean(r.tokens_per_second for r in recs),
                      "acceptance": sum(r.accepted for r in recs)
                      / max(1, sum(r.drafted for r in recs))})
    best = max(table, key=lambda row: float(row["mean_tps"]))
    return str(best["policy"]), table
