"""`svip-local chat NAME | --target T [--draft D]`: the terminal chat app.

A pair that is not downloaded yet is pulled inside the app, with a progress bar, once the user
agrees: on a terminal the question is asked here first; `--yes` answers it; without a terminal
and without --yes the command fails with the command that pulls the pair. Textual is imported
only when the app starts, so the rest of the CLI (and the engine) never loads it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from svip_local import InvalidRequestError, ModelNotDownloadedError
from svip_local.policies import policy_help
from svip_local.registry import status
from svip_local.registry.store import human_size


def register(subparsers: argparse._SubParsersAction) -> None:
    cmd = subparsers.add_parser(
        "chat", help="chat in the terminal with a pair (pulls it first if needed)",
        description="Open the chat app. Keys are shown in its footer; Esc stops a reply, "
                    "Ctrl+C quits.")
    cmd.add_argument("name", nargs="?",
                     help="a pair from `svip-local list` (omit it to choose in the app)")
    cmd.add_argument("--target", type=Path, help="target GGUF (instead of NAME)")
    cmd.add_argument("--draft", type=Path, help="draft GGUF for --target (optional)")
    cmd.add_argument("-y", "--yes", action="store_true",
                     help="download the pair without asking if it is missing")
    cmd.add_argument("--policy", default="auto", help=policy_help())
    cmd.add_argument("--n-gpu-layers", type=int, default=-1,
                     help="layers to offload to the GPU (-1: all, 0: CPU only)")
    cmd.add_argument("--rpc", metavar="HOST:PORT[,HOST:PORT...]", default=None,
                     help="llama.cpp RPC servers to split the target across (trusted "
                          "networks only: the protocol has no authentication)")
    cmd.add_argument("--n-ctx", type=int, help="context size (default: the pair's setting)")
    cmd.add_argument("--threads", type=int, help="CPU threads (default: up to 8, all allowed)")
    cmd.add_argument("--max-tokens", type=int, default=512, help="most tokens per reply")
    cmd.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    cmd.add_argument("--system", default="", help="system prompt")
    cmd.set_defaults(func=_chat)


def _chat(args: argparse.Namespace) -> int:
    if args.name and args.target:
        raise InvalidRequestError("give a pair NAME or --target, not both")
    if args.draft and not args.target:
        raise InvalidRequestError("--draft goes with --target")
    pull = bool(args.name) and _agree_to_pull(args.name, args.yes)

    from tui.app import ChatApp
    from tui.config import ChatSettings, ModelSource

    if args.name:
        source: ModelSource | None = ModelSource(pair=args.name, pull=pull)
    elif args.target:
        source = ModelSource(target=args.target, draft=args.draft)
    else:
        source = None
    settings = ChatSettings(system_prompt=args.system, policy=args.policy,
                            temperature=args.temperature, max_tokens=args.max_tokens,
                            n_ctx=args.n_ctx, n_gpu_layers=args.n_gpu_layers,
                            n_threads=args.threads, rpc_servers=args.rpc)
    with _logs_to_app():
        ChatApp(source, settings).run()
    return 0


def _agree_to_pull(name: str, assume_yes: bool) -> bool:
    """True when the pair must be pulled and the user agreed; raises when they cannot agree."""
    pair = status(name)  # an unknown name fails here, listing the known ones
    if pair.downloaded:
        return False
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        raise ModelNotDownloadedError(
            f"{name} is not downloaded. Run: svip-local pull {name} (or pass --yes)")
    try:
        answer = input(f"{name} is not downloaded yet ({human_size(pair.missing_bytes)}). "
                       "Download it now? [Y/n] ")
    except EOFError:
        answer = "n"
    if answer.strip().lower() not in ("", "y", "yes"):
        raise ModelNotDownloadedError(f"not downloaded; later: svip-local pull {name}")
    return True


@contextmanager
def _logs_to_app() -> Iterator[None]:
    """While the app owns the terminal, the root logger's stream handlers stay quiet (the app
    shows svip_local's warnings as notifications)."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [h for h in saved
                     if getattr(h, "stream", None) not in (sys.stderr, sys.stdout)]
    try:
        yield
    finally:
        root.handlers = saved
