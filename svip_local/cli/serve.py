"""`svip-local serve`: the OpenAI-compatible HTTP server for a pair, on localhost by default.

Ctrl+C or SIGTERM shuts it down gracefully and promptly: the requests in flight are cancelled
first (each still gets its proper end: a stream its finish chunk and `[DONE]`, a cut reply a
503), then uvicorn closes the connections; a second Ctrl+C forces the exit.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from svip_local.cli.generate import add_model_arguments, open_engine
from svip_local.policies import policy_help

if TYPE_CHECKING:
    import socket

    import uvicorn

    from svip_local.server.app import ServerApp

log = logging.getLogger(__name__)

API_KEY_ENV = "SVIP_LOCAL_API_KEY"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve a pair over an OpenAI-compatible HTTP API",
                       description="OpenAI-compatible server (/v1/chat/completions, "
                                   "/v1/completions, /v1/models, /health) with speculative "
                                   "decoding.")
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help=f"require this Bearer key on /v1 (default: ${API_KEY_ENV}, else none)")
    p.add_argument("--model-name", default=None,
                   help="the model id clients see (default: the pair name or target file)")
    p.add_argument("--model-alias", action="append", default=[], metavar="NAME",
                   help="another model id to answer to, for clients that hard-code one "
                        "(repeatable); any other id gets 404 model_not_found")
    p.add_argument("--policy", default=None,
                   help=policy_help().replace("(default: auto)", "(default: the pair's, else "
                                                                  "auto)"))
    p.add_argument("--max-queue", type=_count(0), default=None,
                   help="requests that may wait for a free slot; more get 503 (default 8)")
    p.add_argument("--max-request-bytes", type=_count(1), default=None,
                   help="largest accepted request body (default 1 MiB)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from svip_local.server import create_app

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not _is_loopback(args.host) and api_key is None:
        log.warning("serving on %s without an API key: anyone who can reach this address "
                    "can use the model (set --api-key or $%s)", args.host, API_KEY_ENV)
    with open_engine(args, policy=args.policy, parallel=None) as engine:
        name = args.model_name or args.name or Path(args.target).stem
        limits = {k: v for k, v in (("max_queue", args.max_queue),
                                    ("max_request_bytes", args.max_request_bytes))
                  if v is not None}
        app = create_app(engine, model_name=name, api_key=api_key, aliases=args.model_alias,
                         **limits)
        # One line per request (method, path, status, tokens, seconds), shown by default.
        logging.getLogger("svip_local.server.access").setLevel(logging.INFO)
        print(f"serving {name} on http://{args.host}:{args.port}/v1 ({engine.parallel} "
              f"slot{'s' if engine.parallel > 1 else ''} of {engine.n_ctx} tokens)", flush=True)
        # A bounded graceful shutdown, in case a response still outlives its cancellation.
        config = uvicorn.Config(app, host=args.host, port=args.port,
                                log_level=_uvicorn_level(), access_log=False,  # ours has tokens
                                timeout_graceful_shutdown=5)
        server = _graceful_server(config, app)
        server.run()
        if not server.started:  # uvicorn logged why (e.g. the port is taken)
            return 1
    return 0


def _graceful_server(config: uvicorn.Config, app: ServerApp) -> uvicorn.Server:
    """uvicorn's server, but one that cancels the app's generations as soon as it starts
    shutting down (uvicorn itself would wait for their connections until its timeout, then
    cut them with a bare 500), and that returns from a signal instead of raising it again
    once done (SIGTERM's default action would then kill the process): the shutdown was
    graceful, the command's exit status is 0."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            app.shutdown()
            await super().shutdown(sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield  # only the main thread receives signals
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server(config)


def _count(least: int) -> Callable[[str], int]:
    """An argparse type: an integer >= least (argparse reports the ValueError as usage)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise ValueError(text)
        return value

    parse.__name__ = f"integer >= {least}"
    return parse


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _uvicorn_level() -> str:
    """Follow the CLI's -v: uvicorn's access log only when asked for."""
    return "info" if logging.getLogger().getEffectiveLevel() <= logging.INFO else "warning"
