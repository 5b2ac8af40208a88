"""The models.toml schema: named draft+target pairs, parsed into frozen dataclasses.

Parsing is strict (unknown keys and wrong types are rejected) because a typo in a sha256 or a
source would otherwise surface only after a multi-gigabyte download. Every error names the
file, the entry and the field, in the dotted form a person can find in the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from svip_local.config import MIN_CTX
from svip_local.errors import InvalidRegistryError

ROLES = ("target", "draft")
HUB_SHA256 = "hub"  # models.toml value: trust the hub's own sha256 (its LFS etag), checked at pull

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_POLICY = re.compile(r"[a-z][a-z0-9_-]*(:[^\s:]+)?")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Bytes a file or part may declare: 10 TB, five times the largest open-weight GGUF (a 1T model
# in BF16); more is a typo that would show as absurd sizes and pass the free-space check's maths.
_MAX_SIZE = 10**13


@dataclass(frozen=True)
class HfFile:
    """One file of a hub repo; `sha256` None means the hub's own sha256, checked at pull time."""

    filename: str
    sha256: str | None


@dataclass(frozen=True)
class HfSource:
    """A GGUF on the Hugging Face hub: one file, or split-GGUF shards in order."""

    kind: ClassVar[str] = "hf"
    repo: str
    files: tuple[HfFile, ...]
    revision: str

    @property
    def label(self) -> str:
        """How errors and markers name this source."""
        extra = f" (+{len(self.files) - 1} shards)" if len(self.files) > 1 else ""
        return f"hf {self.repo}/{self.files[0].filename}@{self.revision}{extra}"


@dataclass(frozen=True)
class WheelPart:
    """One part package of a PyPI mirror and the data file inside its wheel."""

    package: str
    version: str
    path: str
    size: int


@dataclass(frozen=True)
class PypiSource:
    """A GGUF mirrored on a package index in parts; concatenating the parts gives the file."""

    kind: ClassVar[str] = "pypi"
    parts: tuple[WheelPart, ...]
    sha256: str

    @property
    def size(self) -> int:
        return sum(part.size for part in self.parts)

    @property
    def label(self) -> str:
        first, last = self.parts[0], self.parts[-1]
        more = f" .. {last.package}=={last.version}" if len(self.parts) > 1 else ""
        return f"pypi {first.package}=={first.version}{more}"


Source = HfSource | PypiSource
SOURCE_KINDS = (HfSource.kind, PypiSource.kind)


@dataclass(frozen=True)
class FileSpec:
    """The target or the draft: its local name, expected size and where to get it, in order.

    `size` is for the free-space check and `list`; what proves a file is its sha256.
    """

    role: str
    filename: str
    size: int | None
    sources: tuple[Source, ...]


@dataclass(frozen=True)
class PairSettings:
    """Recommended engine settings; `chat_template` names its source ("gguf": the file's own)."""

    n_ctx: int
    policy: str
    chat_template: str = "gguf"


@dataclass(frozen=True)
class PairSpec:
    """One named draft+target pair. `verified`: its hashes were checked by the maintainers."""

    name: str
    description: str
    verified: bool
    target: FileSpec
    draft: FileSpec
    settings: PairSettings
    origin: str

    @property
    def files(self) -> tuple[FileSpec, FileSpec]:
        return (self.target, self.draft)


def toml_key(key: str) -> str:
    """A key as it would be written in TOML, so error paths can be searched for in the file."""
    return key if _BARE_KEY.fullmatch(key) else f'"{key}"'


class _Table:
    """A TOML table being read: typed access by key, then a check that no unknown key is left."""

    def __init__(self, raw: object, where: str, origin: str) -> None:
        self.where = where
        self.origin = origin
        if not isinstance(raw, dict):
            raise self.error(None, f"must be a table, not {_type_name(raw)}")
        self._raw: dict[str, Any] = raw
        self._seen: set[str] = set()

    def error(self, key: str | None, problem: str) -> InvalidRegistryError:
        path = self.where if key is None else f"{self.where}.{toml_key(key)}"
        return InvalidRegistryError(f"{self.origin}: {path}: {problem}")

    def get(
        self, key: str, kind: type | tuple[type, ...], *, required: bool = True, default: Any = None
    ) -> Any:
        self._seen.add(key)
        if key not in self._raw:
            if required:
                raise self.error(key, "missing (required)")
            return default
        value = self._raw[key]
        # bool is an int in Python; `size = true` is a mistake, not 1.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self.error(key, f"must be {_kind_name(kind)}, not {_type_name(value)}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self._raw) - self._seen)
        if unknown:
            allowed = ", ".join(sorted(self._seen))
            raise self.error(unknown[0], f"unknown field (allowed here: {allowed})")


_TYPE_NAMES = {
    dict: "a table",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a float",
}


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)


def parse_document(data: Mapping[str, Any], origin: str,
                   problems: list[str] | None = None) -> dict[str, PairSpec]:
    """Parse a whole models.toml (already TOML-decoded) into its pairs, by name.

    Without `problems` the first mistake raises InvalidRegistryError. With it, each mistake
    is appended there and only what it spoils is skipped (that entry, or a stray top-level
    field), so one broken entry in a user's file leaves the others, and the shipped pairs,
    usable.
    """
    def report(exc: InvalidRegistryError) -> None:
        if problems is None:
            raise exc
        problems.append(str(exc))

    doc = _Table(dict(data), "(top level)", origin)
    pairs_raw: dict[str, Any] = {}
    try:
        pairs_raw = doc.get("pairs", dict, required=False, default={})
        doc.finish()
    except InvalidRegistryError as exc:
        report(exc)
    pairs: dict[str, PairSpec] = {}
    for name, raw in pairs_raw.items():
        where = f"pairs.{toml_key(name)}"
        try:
            if not _NAME.fullmatch(name):
                raise InvalidRegistryError(
                    f"{origin}: {where}: invalid name (use lowercase letters, digits, '.', '_',"
                    " '-', starting with a letter or digit)")
            pairs[name] = _parse_pair(name, _Table(raw, where, origin))
        except InvalidRegistryError as exc:
            report(exc)
    return pairs


def _parse_pair(name: str, table: _Table) -> PairSpec:
    description = table.get("description", str, required=False, default="")
    verified = table.get("verified", bool, required=False, default=False)
    settings = _parse_settings(_sub(table, "settings"))
    target = _parse_file("target", _sub(table, "target"))
    draft = _parse_file("draft", _sub(table, "draft"))
    table.finish()
    return PairSpec(
        name=name,
        description=description,
        verified=verified,
        target=target,
        draft=draft,
        settings=settings,
        origin=table.origin,
    )


def _sub(table: _Table, key: str) -> _Table:
    return _Table(table.get(key, dict), f"{table.where}.{key}", table.origin)


def _parse_settings(table: _Table) -> PairSettings:
    n_ctx = table.get("n_ctx", int)
    if n_ctx < MIN_CTX:
        raise table.error("n_ctx", f"must be at least {MIN_CTX}, not {n_ctx}")
    policy = table.get("policy", str)
    if not _POLICY.fullmatch(policy):
        raise table.error(
            "policy",
            f"{policy!r} is not a policy ('auto', or a name with "
            "optional ':' parameters such as 'svip:0.3')",
        )
    chat_template = table.get("chat_template", str, required=False, default="gguf")
    if not chat_template:
        raise table.error("chat_template", "must not be empty")
    table.finish()
    return PairSettings(n_ctx=n_ctx, policy=policy, chat_template=chat_template)


def _parse_file(role: str, table: _Table) -> FileSpec:
    filename = table.get("filename", str)
    if not filename or "/" in filename or "\\" in filename or filename.startswith("."):
        raise table.error("filename", f"{filename!r} must be a plain file name")
    size = table.get("size", int, required=False)
    if size is not None:
        _check_size(table, size)
    sources_raw = table.get("sources", list)
    if not sources_raw:
        raise table.error("sources", "must list at least one source")
    sources = tuple(
        _parse_source(_Table(raw, f"{table.where}.sources[{i}]", table.origin), size)
        for i, raw in enumerate(sources_raw)
    )
    table.finish()
    return FileSpec(role=role, filename=filename, size=size, sources=sources)


def _check_size(table: _Table, size: int) -> None:
    if size <= 0:
        raise table.error("size", "must be positive")
    if size > _MAX_SIZE:
        raise table.error("size", f"{size} bytes is more than any model file "
                                  f"(at most {_MAX_SIZE} bytes, 10 TB)")


def _parse_source(table: _Table, file_size: int | None) -> Source:
    kind = table.get("kind", str)
    if kind == HfSource.kind:
        return _parse_hf(table)
    if kind == PypiSource.kind:
        return _parse_pypi(table, file_size)
    raise table.error("kind", f"unknown source kind {kind!r} (known: {', '.join(SOURCE_KINDS)})")


def _parse_hf(table: _Table) -> HfSource:
    repo = table.get("repo", str)
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise table.error("repo", f"{repo!r} is not a hub repo id like 'owner/name'")
    filenames = table.get("filename", (str, list))
    if isinstance(filenames, str):
        filenames = [filenames]
    if not filenames or not all(isinstance(f, str) and f for f in filenames):
        raise table.error("filename", "must be a file name or a non-empty array of shard names")
    revision = table.get("revision", str, required=False, default="main")
    sha_raw = table.get("sha256", (str, list))
    if isinstance(sha_raw, str):
        if len(filenames) > 1 and sha_raw != HUB_SHA256:
            raise table.error("sha256", "shards need one sha256 each (an array), or 'hub'")
        sha_raw = [sha_raw] * len(filenames)
    if len(sha_raw) != len(filenames):
        raise table.error("sha256", f"has {len(sha_raw)} values for {len(filenames)} files")
    files = []
    for filename, sha in zip(filenames, sha_raw, strict=True):
        if sha != HUB_SHA256 and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            raise table.error("sha256", f"{sha!r} is neither 64 lowercase hex digits nor 'hub'")
        files.append(HfFile(filename=filename, sha256=None if sha == HUB_SHA256 else sha))
    table.finish()
    return HfSource(repo=repo, files=tuple(files), revision=revision)


def _parse_pypi(table: _Table, file_size: int | None) -> PypiSource:
    sha256 = table.get("sha256", str)
    if not _SHA256.fullmatch(sha256):
        raise table.error(
            "sha256",
            f"{sha256!r} is not 64 lowercase hex digits (a mirror's "
            "assembled file needs its exact sha256)",
        )
    parts_raw = table.get("parts", list)
    if not parts_raw:
        raise table.error("parts", "must list at least one part")
    parts = []
    for i, raw in enumerate(parts_raw):
        part = _Table(raw, f"{table.where}.parts[{i}]", table.origin)
        size = part.get("size", int)
        _check_size(part, size)
        parts.append(
            WheelPart(
                package=part.get("package", str),
                version=part.get("version", str),
                path=part.get("path", str),
                size=size,
            )
        )
        part.finish()
    packages = [p.package.lower() for p in parts]
    if len(set(packages)) != len(packages):
        raise table.error("parts", "lists the same package twice")
    source = PypiSource(parts=tuple(parts), sha256=sha256)
    if file_size is not None and source.size != file_size:
        raise table.error("parts", f"part sizes add up to {source.size}, but size is {file_size}")
    table.finish()
    return source
