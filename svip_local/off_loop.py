"""Blocking event streams for asyncio: the engine's generators iterated in a thread of their
own, their events handed to the event loop, so an asyncio application never blocks on
llama.cpp. Cancelling the task that reads cancels the generation and waits (off the loop)
until it has really ended, so its slot is consistent when the cancellation completes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import suppress
from typing import TypeVar

T = TypeVar("T")


class _End:
    """The last item: the stream ended, with `error` if it raised."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


async def iterate_off_loop(items: Iterator[T], cancel: Callable[[], None]) -> AsyncIterator[T]:
    """`items`, each produced in a worker thread; `cancel` stops them early (any thread)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[T | _End] = asyncio.Queue()

    def put(item: T | _End) -> None:
        with suppress(RuntimeError):  # the loop is closed: nobody reads any more
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def pump() -> None:
        error = None
        try:
            for item in items:
                put(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            error = exc
        put(_End(error))

    thread = threading.Thread(target=pump, name="svip-async-stream", daemon=True)
    thread.start()
    try:
        while not isinstance(item := await queue.get(), _End):
            yield item
        if item.error is not None:
            raise item.error
    finally:
        if thread.is_alive():
            cancel()
            await asyncio.shield(asyncio.to_thread(thread.join))
