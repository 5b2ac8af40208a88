"""svip-local: speculative decoding for local LLM chat on llama.cpp, with SVIP draft lengths.

The engine is the library: `Engine(target, draft)` loads a pair, `generate()` streams events.
"""

from svip_local.engine import Engine, EngineConfig
from svip_local.errors import (
    ContextFullError,
    DecodeError,
    IncompatiblePairError,
    InvalidRequestError,
    ModelFileError,
    PromptTooLongError,
    RegistryError,
    SvipError,
)
from svip_local.events import Done, GenerationStats, Notice, Round, Token
from svip_local.policies import DraftPolicy, StepStats, Verdict, parse_policy
from svip_local.sampling import SamplingParams

__all__ = [
    "ContextFullError", "DecodeError", "Done", "DraftPolicy", "Engine", "EngineConfig",
    "GenerationStats", "IncompatiblePairError", "InvalidRequestError", "ModelFileError", "Notice",
    "PromptTooLongError", "RegistryError", "Round", "SamplingParams", "StepStats", "SvipError",
    "Token", "Verdict", "parse_policy",
]
__version__ = "0.1.0"
