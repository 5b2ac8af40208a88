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


class ConstraintError(InvalidRequestError):
    """A JSON Schema, regex or grammar is invalid, unsupported or unsatisfiable; the message
    names the feature, or the line and column."""


class DecodeError(SvipError, RuntimeError):
    """llama_decode failed; the message names the return code's meaning."""


class EngineClosedError(SvipError, RuntimeError):
    """The engine (or one of its models) was closed: make a new one to go on."""


class ContextFullError(DecodeError):
    """The KV cache has no room for the batch (llama_decode returned 1)."""


class RemoteServerError(SvipError, ConnectionError):
    """An RPC server a model is split across is unreachable, speaks another protocol, or hung
    up; `endpoint` names it."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"RPC server {endpoint}: {reason}")
        self.endpoint = endpoint


class RpcUnavailableError(SvipError, RuntimeError):
    """RPC servers were asked for but this llama-cpp-python was built without RPC."""


class RegistryError(SvipError):
    """models.toml is invalid, a name is unknown, or a pull failed."""


class InvalidRegistryError(RegistryError, ValueError):
    """A models.toml (shipped or the user's) breaks the schema; the message names the place."""


class UnknownModelError(RegistryError, KeyError):
    """No registry entry has this name; the message lists the known names."""

    def __str__(self) -> str:
        # KeyError.__str__ would quote the message; people read it as it is.
        return str(self.args[0]) if self.args else ""


class ModelNotDownloadedError(RegistryError):
    """The pair is not on disk and pulling was not allowed; the message gives the command to run."""


class DownloadError(RegistryError):
    """Every source of a file failed; the message lists each source and why."""


class VerificationError(RegistryError):
    """A file's sha256 or size does not match the registry; the bad file is not kept."""


class DiskSpaceError(RegistryError, OSError):
    """Not enough free disk space to start a download."""
