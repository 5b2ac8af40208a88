"""llama.cpp's own speculative decoding as a peer in a benchmark: `llama-speculative-simple`
(one draft chain per round) and `llama-speculative` (a tree of draft branches).

The binaries are built by scripts/build_llama_tools.sh; `peer_runner` runs them and
`peer_output` parses what they print (docs/peers.md). Peer runs are specs
`llama.cpp:N_MAX:P_MIN` (the simple example) and `llama.cpp-tree:N_PARALLEL:P_SPLIT[:N_MAX]`
(the tree example: up to N_PARALLEL branches, a new one where a draft candidate's probability
exceeds P_SPLIT, N_MAX draft tokens per round over the whole tree, llama.cpp's default 3 when
left out) that the benchmark interleaves with its own; their time is prefill + generation,
like ours (model load excluded). This llama.cpp's tree example fails once its tree branches
(`peer_output.TREE_NEEDS_KVU`): such a run raises `PeerError` rather than yielding a number.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from svip_local.bench import peer_runner
from svip_local.bench.defaults import DEFAULT_GRID
from svip_local.bench.peer_runner import TREE_BINARY_NAME, PeerArgs
from svip_local.bench.runner import BenchItem, RunRecord
from svip_local.errors import InvalidRequestError
from svip_local.native import use_extra_buffer_types

PREFIX = "llama.cpp:"
TREE_PREFIX = "llama.cpp-tree:"
PREFIXES = (PREFIX, TREE_PREFIX)
TREE_N_MAX = 3  # llama.cpp's own --spec-draft-n-max default (common/common.h)


def handles(spec: str) -> bool:
    """Whether `spec` names a run of one of llama.cpp's speculative binaries."""
    return spec.startswith(PREFIXES)


def spec(n_max: int, p_min: float) -> str:
    return f"{PREFIX}{n_max}:{p_min:g}"


def tree_spec(n_parallel: int, p_split: float, n_max: int | None = None) -> str:
    return f"{TREE_PREFIX}{n_parallel}:{p_split:g}" + ("" if n_max is None else f":{n_max}")


def parse_spec(text: str) -> tuple[int, float]:
    n_max, _, p_min = text[len(PREFIX):].partition(":")
    return int(n_max), float(p_min or 0)


def parse_tree_spec(text: str) -> tuple[int, float, int]:
    """`llama.cpp-tree:N_PARALLEL:P_SPLIT[:N_MAX]` -> (n_parallel, p_split, n_max)."""
    parts = text[len(TREE_PREFIX):].split(":") if text.startswith(TREE_PREFIX) else []
    try:
        if not 2 <= len(parts) <= 3:
            raise ValueError
        n_parallel, p_split = int(parts[0]), float(parts[1])
        n_max = int(parts[2]) if len(parts) == 3 else TREE_N_MAX
    except ValueError:
        raise InvalidRequestError(f"bad tree peer spec {text!r}: want "
                                  f"{TREE_PREFIX}N_PARALLEL:P_SPLIT[:N_MAX]") from None
    if n_parallel < 1 or n_max < 1 or not 0.0 <= p_split <= 1.0:
        raise InvalidRequestError(f"bad tree peer spec {text!r}: N_PARALLEL and N_MAX must be "
                                  ">= 1 and P_SPLIT within [0, 1]")
    return n_parallel, p_split, n_max


def label(name: str) -> str:
    """How a peer spec reads in a table."""
    if name.startswith(TREE_PREFIX):
        n_parallel, p_split, n_max = parse_tree_spec(name)
        return f"llama.cpp tree np={n_parallel} p_split={p_split:g} n_max={n_max}"
    n_max, p_min = parse_spec(name)
    return f"llama.cpp n_max={n_max} p_min={p_min:g}"


class Peer:
    """Runs `llama-speculative-simple` (specs `llama.cpp:...`) and `llama-speculative` (specs
    `llama.cpp-tree:...`, the binary of that name beside the first) on the benchmark's files
    and prompts. The binaries of the prefixes in `needs` must be there now."""

    def __init__(self, target: str | Path, draft: str | Path, *, threads: int, n_ctx: int,
                 n_gpu_layers: int | None = None, binary: str | Path | None = None,
                 runner: ModuleType | None = None, needs: Iterable[str] = (PREFIX,)) -> None:
        self._runner = runner or peer_runner
        self.binary = Path(binary) if binary else Path(self._runner.default_binary())
        self.tree_binary = self.binary.with_name(TREE_BINARY_NAME)
        for prefix in needs:
            exe = self.binary_for(prefix)
            if not exe.is_file():
                raise InvalidRequestError(
                    f"{exe} not found: build it with scripts/build_llama_tools.sh "
                    "(or pass --peer-binary, the path of llama-speculative-simple; "
                    "llama-speculative is looked for beside it)")
        self.target, self.draft = Path(target), Path(draft)
        self.threads, self.n_ctx, self.n_gpu_layers = threads, n_ctx, n_gpu_layers
        # The same weight layout as svip_local: repacked for this CPU (native.EXTRA_BUFFER_TYPES)
        # unless SVIP_LOCAL_EXTRA_BUFTS=0; the binary itself is built without AMX where
        # svip_local leaves AMX out (scripts/build_llama_tools.sh).
        self._extra = [] if use_extra_buffer_types() else ["--no-repack"]

    def handles(self, name: str) -> bool:
        return handles(name)

    def binary_for(self, name: str) -> Path:
        return self.tree_binary if name.startswith(TREE_PREFIX) else self.binary

    def run_text(self, prompt: str, name: str, *, max_tokens: int, temperature: float,
                 seed: int, extra: Sequence[str] = ()) -> dict[str, Any]:
        """One run of spec `name` on `prompt` (text): `peer_runner.run_peer`'s fields.
        `extra`: more flags for the binary (`--ignore-eos`, `--json-schema SCHEMA`)."""
        settings: dict[str, Any]
        if name.startswith(TREE_PREFIX):
            n_parallel, p_split, n_max = parse_tree_spec(name)
            settings = {"n_max": n_max, "n_parallel": n_parallel, "p_split": p_split}
        else:
            n_max, p_min = parse_spec(name)
            settings = {"n_max": n_max, "p_min": p_min}
        args = PeerArgs(self.target, self.draft, **settings, n_predict=max_tokens,
                        threads=self.threads, ctx=self.n_ctx, temp=temperature, seed=seed,
                        n_gpu_layers=self.n_gpu_layers, extra_args=(*self._extra, *extra),
                        binary=self.binary_for(name))
        return dict(self._runner.run_peer(args, prompt))

    def run(self, item: BenchItem, name: str, temperature: float, seed: int,
            repeat: int) -> RunRecord:
        res = self.run_text(item.prompt.text, name, max_tokens=item.max_tokens,
                            temperature=temperature, seed=seed,
                            extra=["--ignore-eos"] if item.ignore_eos else [])
        wall = res["total_s"] if res["total_s"] is not None else res["decode_s"]
        return RunRecord(item.suite, item.group, item.prompt.id, temperature, item.max_tokens,
                         name, label(name), repeat,
                         res["n_generated"], wall, res["prefill_s"] or 0.0,
                         res["drafted"] or 0, res["accepted"] or 0,
                         rounds=res["verify_rounds"] or 0, finish="peer")


def sweep(peer: Peer, items: Sequence[BenchItem], grid: Iterable[tuple[int, float]] = DEFAULT_GRID,
          *, on_run: Callable[[], None] | None = None) -> tuple[str, list[dict[str, float | str]]]:
    """Greedy runs of every grid setting (specs `llama.cpp:N_MAX:P_MIN`, the simple example)
    on `items`; the best setting by mean tokens/s."""
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
