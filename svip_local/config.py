"""How an engine loads and runs its pair: one frozen value shared by the engine, the loader,
calibration (the machine's fingerprint depends on offload and threads) and the front ends."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from svip_local.errors import InvalidRequestError
from svip_local.rpc import parse_endpoints

DEFAULT_MAX_DRAFT = 16
DEFAULT_MAX_COPY = 64


# The smallest context: a tree-verifying target context holds `native.MAX_BRANCHES` (64)
# sequences, and llama.cpp aborts the process when its batch (at most n_ctx) is smaller.
MIN_CTX = 64
# Slots: each takes a 64-branch share of llama.cpp's 256 sequences (trees verify on them).
MAX_PARALLEL = 4


@dataclass(frozen=True)
class EngineConfig:
    """GPU offload is per model: a laptop may fit the draft fully and the target partly."""

    n_ctx: int = 4096  # per slot
    n_batch: int = 512
    # Requests generating at once, each in its own slot of n_ctx tokens (more wait for one).
    # None: as many as fit this machine's memory, at most 4 (`engine.default_parallel`).
    parallel: int | None = None
    n_gpu_layers: int = -1  # -1: all layers (no effect on a CPU-only build)
    draft_n_gpu_layers: int | None = None  # None: same as the target
    n_threads: int | None = None  # None: native.default_threads()
    # llama.cpp RPC servers ("HOST:PORT", or one comma-separated string) whose devices hold
    # the model's offloaded layers: the target's, and rarely the draft's.
    rpc_servers: tuple[str, ...] = ()
    draft_rpc_servers: tuple[str, ...] = ()
    flash_attn: bool | None = None  # None: llama.cpp decides
    max_draft: int = DEFAULT_MAX_DRAFT
    # The most tokens a copy (prompt lookup) verifies in one round: a reply that repeats
    # long stretches of its input runs at the verification batch's rate (below n_batch).
    max_copy: int = DEFAULT_MAX_COPY
    policy: str = "auto"
    chat_template: str = "gguf"  # the GGUF's own, or a llama.cpp built-in by name
    # Time this machine for a few seconds at start-up when `auto` has nothing stored to
    # start from (no calibration, no live estimates of an earlier session).
    probe: bool = True

    def __post_init__(self) -> None:
        if self.n_ctx < MIN_CTX:
            raise InvalidRequestError(f"n_ctx must be at least {MIN_CTX}, got {self.n_ctx}")
        if self.parallel is not None and not 1 <= self.parallel <= MAX_PARALLEL:
            raise InvalidRequestError(f"parallel must be 1..{MAX_PARALLEL}, got {self.parallel}")
        if self.max_draft < 1:
            raise InvalidRequestError(f"max_draft must be >= 1, got {self.max_draft}")
        if not 1 <= self.max_copy < self.n_batch:
            raise InvalidRequestError(f"max_copy must be >= 1 and below n_batch "
                                      f"({self.n_batch}), got {self.max_copy}")
        if self.n_threads is not None and self.n_threads < 1:
            raise InvalidRequestError(f"n_threads must be >= 1, got {self.n_threads}")
        for name in ("rpc_servers", "draft_rpc_servers"):
            value = getattr(self, name)
            if value:  # a frozen field, normalized once: "a:1,b:2" -> ("a:1", "b:2")
                object.__setattr__(self, name, parse_endpoints(value))

    @property
    def draft_layers(self) -> int:
        """The draft's offload: its own setting, else the target's."""
        return self.n_gpu_layers if self.draft_n_gpu_layers is None else self.draft_n_gpu_layers

    def with_overrides(self, **settings: Unpack[EngineSettings]) -> EngineConfig:
        """A copy with the settings that are not None applied; an unknown name is an error that
        lists the known ones (an untyped caller's typo must not pass silently or as a
        TypeError)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise InvalidRequestError(f"unknown engine setting(s) {', '.join(unknown)}; "
                                      f"known: {', '.join(sorted(known))}")
        given: dict[str, Any] = {k: v for k, v in settings.items() if v is not None}
        return dataclasses.replace(self, **given)  # __post_init__ checks the values


class EngineSettings(TypedDict, total=False):
    """`EngineConfig`'s fields as the typed keywords of `load` and `Engine`, so a type checker
    sees a misspelled setting; None leaves one unset (tests/fast/test_loader.py keeps the two
    in step)."""

    n_ctx: int | None
    n_batch: int | None
    parallel: int | None
    n_gpu_layers: int | None
    draft_n_gpu_layers: int | None
    n_threads: int | None
    rpc_servers: tuple[str, ...] | str | None  # or one comma-separated string
    draft_rpc_servers: tuple[str, ...] | str | None
    flash_attn: bool | None
    max_draft: int | None
    max_copy: int | None
    policy: str | None
    chat_template: str | None
    probe: bool | None
