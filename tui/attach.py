"""`/attach PATH` lines of a message: each becomes the file's text in a fenced code block.

The app expands them in the prompt instead of sending, so what is sent is what the user saw.
"""

from __future__ import annotations

import re
from pathlib import Path

COMMAND = "/attach"
LIMIT_BYTES = 32 * 1024  # a source file of several hundred lines; more would crowd the context
_FENCE_RUN = re.compile(r"`{3,}")


class AttachError(ValueError):
    """A file that cannot be attached; the message names it and says why."""


def has_attachments(text: str) -> bool:
    return any(_path_of(line) is not None for line in text.splitlines())


def expand(text: str, cwd: Path | None = None) -> tuple[str, list[str]]:
    """`text` with every `/attach PATH` line replaced by that file's block, and the names
    attached. PATH is the rest of the line (quotes around it dropped, ~ expanded), relative to
    `cwd` (default: the working directory)."""
    lines, names = [], []
    for line in text.splitlines():
        path = _path_of(line)
        if path is None:
            lines.append(line)
        else:
            lines.append(_block(path, cwd or Path.cwd()))
            names.append(path)
    return "\n".join(lines), names


def _path_of(line: str) -> str | None:
    """The path an `/attach` line names ("" when it names none), None for any other line."""
    command, _, rest = line.strip().partition(" ")
    if command != COMMAND:
        return None
    rest = rest.strip()
    if len(rest) >= 2 and rest[0] == rest[-1] and rest[0] in "'\"":
        rest = rest[1:-1]
    return rest


def _block(name: str, cwd: Path) -> str:
    if not name:
        raise AttachError(f"{COMMAND} needs a file: {COMMAND} PATH")
    path = cwd / Path(name).expanduser()
    try:
        if path.is_dir():
            raise AttachError(f"cannot attach {name}: it is a directory")
        size = path.stat().st_size
        if size > LIMIT_BYTES:
            raise AttachError(f"cannot attach {name}: {size:,} bytes, over the limit of "
                              f"{LIMIT_BYTES:,}")
        data = path.read_bytes()
    except FileNotFoundError:
        raise AttachError(f"cannot attach {name}: no such file") from None
    except OSError as exc:
        raise AttachError(f"cannot attach {name}: {exc.strerror or exc}") from None
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AttachError(f"cannot attach {name}: not UTF-8 text (byte {data[exc.start]:#04x} "
                          f"at offset {exc.start})") from None
    content = content.replace("\r\n", "\n").rstrip("\n")
    # A fence longer than any run of backticks inside, so the file cannot close it early.
    fence = "`" * max([3, *(len(run) + 1 for run in _FENCE_RUN.findall(content))])
    return f"`{name}`:\n{fence}{path.suffix.lstrip('.')}\n{content}\n{fence}"
