"""The `svip-local` console script: one parser, one subcommand module per noun or verb.

Each module in this package exposes `register(subparsers)`, which adds its subcommand and
sets `func(args) -> int` on it. Subcommand modules import heavy pieces (the TUI, the server)
lazily, so `svip-local list` stays fast and the engine never imports textual.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from svip_local.errors import SvipError

# Order is the order shown in --help.
_SUBCOMMAND_MODULES = ("generate", "chat", "models", "bench", "calibrate", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svip-local",
        description="Local LLM chat with speculative decoding (draft + target GGUF, SVIP).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-vv also shows llama.cpp's own log)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(f"svip_local.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(argv)
    except KeyboardInterrupt:  # anywhere, the parser's imports included
        print("svip-local: interrupted", file=sys.stderr)
        return 130


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.verbose >= 2:  # llama.cpp's own log is quiet unless asked for
        logging.getLogger("svip_local.llama_cpp").setLevel(logging.DEBUG)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SvipError as exc:
        print(f"svip-local: error: {exc}", file=sys.stderr)
        if getattr(args, "json", False):  # scripts read stdout: the error is JSON there too
            json.dump({"error": {"type": type(exc).__name__, "message": str(exc)}}, sys.stdout)
            sys.stdout.write("\n")
        return 1
