"""What the app loads and how it generates: plain values the CLI, screens and tests share."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from svip_local import SamplingParams, SvipError, check_spec, policy_entries

# The policy table's choices, `auto` (the default) first.
POLICY_NAMES = tuple(sorted((e.name for e in policy_entries("policy")),
                            key=lambda name: name != "auto"))


@dataclass(frozen=True)
class ModelSource:
    """A registry pair by name (pulled first when `pull` is True: the user agreed), or paths."""

    pair: str | None = None
    target: Path | None = None
    draft: Path | None = None
    pull: bool = False

    @property
    def label(self) -> str:
        if self.pair:
            return self.pair
        assert self.target is not None
        return self.target.name + (f" + {self.draft.name}" if self.draft else "")


@dataclass(frozen=True)
class ChatSettings:
    """What the settings screen edits. `policy` is a spec: NAME[:PARAMETER]."""

    system_prompt: str = ""
    policy: str = "auto"
    temperature: float = 0.0
    max_tokens: int = 512
    n_ctx: int | None = None  # None: the pair's recommendation (or 4096 for plain paths)
    n_gpu_layers: int = -1
    n_threads: int | None = None  # None: llama.cpp threads for this machine (native default)
    rpc_servers: str | None = None  # the target across llama.cpp RPC servers: "HOST:PORT,..."

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature)

    @property
    def policy_name(self) -> str:
        return self.policy.partition(":")[0]

    @property
    def policy_parameter(self) -> str:
        return self.policy.partition(":")[2]


def policy_spec(name: str, parameter: str) -> str:
    """`name[:parameter]`, checked by the engine's own parser (ValueError with its message;
    a policy that needs this machine's calibration is checked fully when it is built)."""
    spec = f"{name}:{parameter.strip()}" if parameter.strip() else name
    try:
        return check_spec(spec)
    except SvipError as exc:
        raise ValueError(str(exc)) from exc


def parse_form(system_prompt: str, policy_name: str, parameter: str, temperature: str,
               max_tokens: str, base: ChatSettings) -> ChatSettings:
    """Settings from the screen's text fields; ValueError names the field that is wrong."""
    spec = policy_spec(policy_name, parameter)
    try:
        temp = float(temperature)
        SamplingParams(temperature=temp)
    except (ValueError, SvipError) as exc:
        raise ValueError(f"temperature: a number >= 0, not {temperature!r}") from exc
    try:
        tokens = int(max_tokens)
    except ValueError:
        tokens = 0
    if tokens < 1:
        raise ValueError(f"max tokens: a whole number >= 1, not {max_tokens!r}")
    return replace(base, system_prompt=system_prompt.strip(), policy=spec, temperature=temp,
                   max_tokens=tokens)
