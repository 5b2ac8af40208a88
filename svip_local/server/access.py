"""One log line per request: method, path, status, tokens generated and seconds taken.

An ASGI wrapper rather than a Starlette middleware class, so that a streamed reply is logged
when its last chunk has gone out (with the tokens it carried), not when its headers did. The
endpoints note the tokens in `request.state.generated`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger("svip_local.server.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 0
        state = scope.setdefault("state", {})

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            tokens = state.get("generated")
            log.info("%s %s %s %s %.3fs", scope["method"], scope["path"], status or "-",
                     "-" if tokens is None else f"{tokens} tokens",
                     time.perf_counter() - start)
