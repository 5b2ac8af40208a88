"""Who is calibrated: the machine (what decides the costs) and the pair (which files).

Calibrations are stored per (pair, fingerprint), so a change of GPU, offload or threads asks
for a new one. The GPU is the one llama.cpp itself sees (its backend device list), so no
vendor tool is run and a Metal or Vulkan GPU counts as well as a CUDA one.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

from svip_local.config import EngineConfig


@dataclass(frozen=True)
class Fingerprint:
    """What decides the costs: calibrations are stored per fingerprint."""

    cpu: str
    gpu: str
    n_gpu_layers: str  # "target/draft"; 0/0 on a build without offload
    threads: int
    # The RPC servers the target (and draft) are split across, "target/draft": the network
    # is part of the costs. "" without (and then left out of the store's key).
    rpc: str = ""


@dataclass(frozen=True)
class PairIdentity:
    """A pair's files by name and size: cheap, and a re-encoded target (F16) differs."""

    target: str
    target_size: int
    draft: str
    draft_size: int

    @classmethod
    def of(cls, target: str | Path, draft: str | Path) -> PairIdentity:
        t, d = Path(target), Path(draft)
        return cls(t.name, t.stat().st_size, d.name, d.stat().st_size)


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def fingerprint(config: EngineConfig, *, gpu: str, default_threads: int) -> Fingerprint:
    """The fingerprint of an engine with `config` on this machine; `gpu` is llama.cpp's first
    GPU device ("cpu" for none), `default_threads` what `n_threads=None` means here."""
    rpc = ""
    if config.rpc_servers or config.draft_rpc_servers:
        rpc = f"{','.join(config.rpc_servers)}/{','.join(config.draft_rpc_servers)}"
    offload = gpu != "cpu" or rpc
    layers = f"{config.n_gpu_layers}/{config.draft_layers}" if offload else "0/0"
    return Fingerprint(cpu_model(), gpu, layers, config.n_threads or default_threads, rpc)
