"""svip-local: speculative decoding for local LLM chat on llama.cpp, with SVIP draft lengths.

    engine = svip_local.load("qwen2.5-coder-1.5b")      # or load(target="t.gguf", draft=...)
    for event in engine.generate("def fib(n):", max_tokens=64): ...
    for event in svip_local.stream_chat(engine, [{"role": "user", "content": "Hi"}]): ...
    async for event in svip_local.astream_chat(engine, messages): ...  # asyncio

This is the public API: the TUI and the server use nothing else (plus `chat`, `conversation`
and `registry`). Importing it is cheap: names resolve on first use, so
libllama loads only when an engine module is (`svip-local list` never pays for it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from svip_local.chat import astream_chat as astream_chat, stream_chat as stream_chat
    from svip_local.constraint import Constraint as Constraint
    from svip_local.engine import Engine as Engine
    from svip_local.errors import (
        ConstraintError as ConstraintError,
        ContextFullError as ContextFullError,
        DecodeError as DecodeError,
        EngineClosedError as EngineClosedError,
        IncompatiblePairError as IncompatiblePairError,
        InvalidRequestError as InvalidRequestError,
        ModelFileError as ModelFileError,
        ModelNotDownloadedError as ModelNotDownloadedError,
        PromptTooLongError as PromptTooLongError,
        RegistryError as RegistryError,
        RemoteServerError as RemoteServerError,
        RpcUnavailableError as RpcUnavailableError,
        SvipError as SvipError,
    )
    from svip_local.events import (
        Done as Done,
        Event as Event,
        GenerationStats as GenerationStats,
        Notice as Notice,
        Round as Round,
        Token as Token,
        ToolCall as ToolCall,
        ToolCallDelta as ToolCallDelta,
    )
    from svip_local.loader import load as load
    from svip_local.policies import (
        Plan as Plan,
        check_spec as check_spec,
        policy_entries as policy_entries,
    )
    from svip_local.sampling import MAX_SEED as MAX_SEED, SamplingParams as SamplingParams

# What a newcomer needs: load an engine, generate or chat, read the events, set sampling and
# catch the errors. Also what the TUI and the server may use and find nowhere else public:
# a policy spec checked and the policies listed before an engine exists, the `Plan` an engine
# makes of one, and the largest seed a request may carry. The rest (EngineConfig, policy
# classes, parse_policy, policy_help...) is imported from its own module.
_EXPORTS = {
    "svip_local.chat": ("astream_chat", "stream_chat"),
    "svip_local.constraint": ("Constraint",),
    "svip_local.engine": ("Engine",),
    "svip_local.errors": ("ConstraintError", "ContextFullError", "DecodeError", "EngineClosedError",
                          "IncompatiblePairError",
                          "InvalidRequestError", "ModelFileError", "ModelNotDownloadedError",
                          "PromptTooLongError", "RegistryError", "RemoteServerError",
                          "RpcUnavailableError", "SvipError"),
    "svip_local.events": ("Done", "Event", "GenerationStats", "Notice", "Round", "Token",
                          "ToolCall", "ToolCallDelta"),
    "svip_local.loader": ("load",),
    "svip_local.policies": ("Plan", "check_spec", "policy_entries"),
    "svip_local.sampling": ("MAX_SEED", "SamplingParams"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'svip_local' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
