"""One root exception so embedding applications and the CLI can catch every user-facing error.

Each subclass names a domain; messages say what went wrong and what to do, because they are
shown to people as they are (the CLI prints them without a traceback).
"""

from __future__ import annotations


class SvipError(Exception):
    """Root of every error svip-local raises on purpose."""


class ModelFileError(SvipError, ValueError):
    """A GGUF file is missing, unreadable, not GGUF, truncated or rejected by llama.cpp."""


class IncompatiblePairError(SvipError, ValueError):
    """The draft cannot speculate for the target: their vocabularies differ."""


class PromptTooLongError(SvipError, ValueError):
    """The prompt (plus room for one new token) does not fit the context."""


class InvalidRequestError(SvipError, ValueError):
    """A generation parameter is out of range or a policy name is unknown."""


class DecodeError(SvipError, RuntimeError):
    """llama_decode failed; the message names the return code's meaning."""


class ContextFullError(DecodeError):
    """The KV cache has no room for the batch (llama_decode returned 1)."""


class RegistryError(SvipError):
    """models.toml is invalid, a name is unknown, or a pull failed."""
