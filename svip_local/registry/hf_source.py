"""Files from the Hugging Face hub, through huggingface_hub: its cache, its bars, its resume.

What huggingface_hub 2.x gives and what it does not: a transfer cut mid-file is resumed within
the same call (it retries with a Range request), and a finished file is moved into the cache
atomically; a partial file is deleted when the process stops, so an interrupted hub pull starts
that file again. It checks sizes, not hashes, so every file is hashed here and a mismatch is
deleted from the cache.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from svip_local.errors import DownloadError, VerificationError
from svip_local.registry.spec import HfSource
from svip_local.registry.store import ProgressCallback, ensure_free_space, sha256_file

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubSettings:
    """HF_ENDPOINT, HF_HUB_OFFLINE and HF_HUB_CACHE, read at call time.

    huggingface_hub reads them once, at import; a long-lived process (the TUI, a test run) may
    set them later, so they are read here and passed explicitly.
    """

    endpoint: str | None
    offline: bool
    cache_dir: Path

    @classmethod
    def from_env(cls) -> HubSettings:
        from huggingface_hub import constants

        offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE
        cache_dir = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
        return cls(os.environ.get("HF_ENDPOINT") or None, offline, Path(cache_dir))


def present(source: HfSource) -> list[Path] | None:
    """The cached files (all shards) for the source's revision, found without the network."""
    from huggingface_hub import try_to_load_from_cache

    cache_dir = HubSettings.from_env().cache_dir
    paths = []
    for file in source.files:
        found = try_to_load_from_cache(
            source.repo, file.filename, cache_dir=cache_dir, revision=source.revision
        )
        if not isinstance(found, str):  # None, or the "known not to exist" sentinel
            return None
        paths.append(Path(found))
    return paths


def verify(
    source: HfSource, paths: list[Path], *, label: str, progress: ProgressCallback | None
) -> list[str]:
    """Hash each file against its pinned sha256 or the hub's; a mismatch leaves the cache."""
    digests = []
    for file, path in zip(source.files, paths, strict=True):
        expected = file.sha256 or _hub_sha256(path)
        actual = sha256_file(path, label=label, progress=progress)
        if actual != expected:
            discard(path)
            whose = "the hub's sha256" if file.sha256 is None else "sha256 in models.toml"
            raise VerificationError(
                f"{file.filename}: sha256 mismatch: got {actual}, {whose} is {expected}; "
                "removed it from the Hugging Face cache"
            )
        digests.append(actual)
    return digests


def fetch(
    source: HfSource, *, size: int | None, label: str, progress: ProgressCallback | None
) -> list[Path]:
    """Download every shard into the Hugging Face cache (not yet verified: see `verify`)."""
    import httpx2
    from huggingface_hub import hf_hub_download

    settings = HubSettings.from_env()
    if settings.offline:
        raise DownloadError("offline (HF_HUB_OFFLINE is set) and not in the Hugging Face cache")
    ensure_free_space(settings.cache_dir, size or 0, f"{source.repo} in the Hugging Face cache")
    # With a callback, huggingface_hub's bar is replaced by one that reports to it. A partial,
    # not a class: huggingface_hub then calls it with the bar's keyword arguments only.
    bar = None if progress is None else partial(_CallbackBar, label, progress)
    paths = []
    for file in source.files:
        _probe(source, file.filename, settings)
        try:
            found = hf_hub_download(
                source.repo,
                file.filename,
                revision=source.revision,
                cache_dir=settings.cache_dir,
                endpoint=settings.endpoint,
                tqdm_class=bar,  # type: ignore[arg-type]  # called like tqdm, need not be one
            )
        except (OSError, ValueError, httpx2.HTTPError) as exc:
            raise DownloadError(f"{file.filename}: {_one_line(exc)}") from exc
        paths.append(Path(found))
    return paths


def discard(path: Path) -> None:
    """Delete a cached file: the snapshot link and the blob it points to."""
    blob = Path(os.path.realpath(path))
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def _probe(source: HfSource, filename: str, settings: HubSettings) -> None:
    """One HEAD without retries first: on an unreachable hub huggingface_hub would retry with
    backoff for about 25 s per file before giving up."""
    import httpx2
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(source.repo, filename, revision=source.revision, endpoint=settings.endpoint)
    try:
        get_hf_file_metadata(url, endpoint=settings.endpoint)
    except httpx2.TransportError as exc:  # nothing answered: DNS, refused, timed out
        raise DownloadError(f"hub unreachable ({url}): {_one_line(exc)}") from exc
    except (OSError, httpx2.HTTPError) as exc:  # it answered: not found, gated, server error
        raise DownloadError(f"{filename}: {_one_line(exc)}") from exc


def _hub_sha256(path: Path) -> str:
    """The hub's sha256 of a cached file: huggingface_hub names a blob by its etag, which for
    files stored with LFS (every GGUF) is the sha256."""
    blob = Path(os.path.realpath(path))
    if blob.parent.name == "blobs" and _SHA256.fullmatch(blob.name):
        return blob.name
    raise VerificationError(
        f"{path}: the hub gave no sha256 for this file (etag {blob.name!r}); "
        "pin its sha256 in models.toml"
    )


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """huggingface_hub's messages span lines (request ids, hints); a failure list wants one."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _CallbackBar:
    """Stands in for tqdm inside huggingface_hub and forwards byte counts to a callback."""

    def __init__(
        self,
        label: str,
        progress: ProgressCallback,
        *,
        total: int | None = None,
        initial: int = 0,
        **_bar_options: object,
    ) -> None:
        self._label = label
        self._progress = progress
        self.total = total or 0
        self.n = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        self._progress(self._label, self.n, self.total)

    def close(self) -> None:
        """Nothing to close; present because huggingface_hub closes its bars."""

    def __enter__(self) -> _CallbackBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
