"""The engine side of the app, run in worker threads: load a pair, stream one reply.

Nothing here touches widgets: results go out through `post` (the app's `post_message`, which
is thread-safe and never blocks), so decoding never waits for the screen to redraw.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from time import perf_counter
from typing import TYPE_CHECKING

from textual.message import Message

from svip_local import Done, Notice, Round, SvipError, Token, load
from svip_local.chat import ChatTemplate, measure_target_alone, stream_chat
from svip_local.registry import ProgressCallback
from tui.config import ChatSettings, ModelSource
from tui.events import (
    EngineFailed,
    EngineReady,
    LiveStats,
    PullProgress,
    ReplyChunk,
    ReplyDone,
    ReplyFailed,
    ReplyNotice,
    TargetTimed,
)
from tui.speed import MIN_TOKENS, live_estimate

if TYPE_CHECKING:
    from svip_local import Engine, Plan

log = logging.getLogger(__name__)
Post = Callable[[Message], object]

# The screen redraws at most this often while a reply streams: tokens arriving faster are
# posted together. Each update re-lays out the growing Markdown reply on the UI thread, which
# takes CPU from decoding: measured (scripts/bench_tui.py, 2-core EPYC) at 20-24% of a reply's
# wall time at 30 updates/s and 11-14% at 10/s.
UPDATE_INTERVAL_S = 1 / 10


class EngineSlot:
    """The one engine the app owns, and the lock every user of it holds.

    Closing takes the lock, so it waits for a reply in progress to stop at its next round
    (the app cancels it first) instead of freeing llama.cpp contexts under a decode.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._engine: Engine | None = None
        self.closed = False

    @property
    def engine(self) -> Engine | None:
        """The loaded engine, or None while loading, after a failure and once closed."""
        return self._engine

    def replace(self, source: ModelSource, settings: ChatSettings,
                progress: ProgressCallback) -> tuple[Engine, ChatTemplate]:
        """Close the current engine, then load `source` (pulling it first if allowed)."""
        with self.lock:
            self._close_engine()
            if self.closed:
                raise AppClosing
        # Loading (and pulling) happens outside the lock: closing the app must not wait for a
        # download; an engine that finishes loading after the app closed is closed at once.
        engine = load(source.pair, target=source.target, draft=source.draft, pull=source.pull,
                      progress=progress, n_ctx=settings.n_ctx, parallel=1,  # one chat
                      n_gpu_layers=settings.n_gpu_layers, n_threads=settings.n_threads,
                      rpc_servers=settings.rpc_servers,
                      policy=settings.policy)
        with self.lock:
            if self.closed:
                engine.close()
                raise AppClosing
            try:
                template = ChatTemplate.for_engine(engine)
            except BaseException:
                engine.close()
                raise
            self._engine = engine
        return engine, template

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self._close_engine()

    def _close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


class AppClosing(Exception):
    """Raised inside a worker to abandon its work because the app is shutting down."""


def load_engine(slot: EngineSlot, source: ModelSource, settings: ChatSettings,
                post: Post) -> None:
    """The load worker: `source` into `slot`, its pull's progress on the way, then
    `EngineReady`, or `EngineFailed` with the reason (the app shows every failure)."""
    def progress(label: str, done: int, total: int) -> None:
        if slot.closed:
            raise AppClosing
        post(PullProgress(label, done, total))

    try:
        engine, template = slot.replace(source, settings, progress)
    except AppClosing:
        return
    except SvipError as exc:
        post(EngineFailed(str(exc)))
        return
    except Exception as exc:  # the app shows every failure instead of dying
        log.exception("loading %s failed", source.label)
        post(EngineFailed(f"unexpected error: {exc!r}"))
        return
    post(EngineReady(engine, template, source.label))


@dataclass(frozen=True)
class ReplyJob:
    """Everything one reply needs, fixed when it starts (later settings apply to the next)."""

    engine: Engine
    template: ChatTemplate
    policy: Plan
    messages: list[dict[str, str]]
    settings: ChatSettings
    cancel: threading.Event  # also stops the timing after the reply
    time_target: bool  # time the target alone after the reply (unless `auto` priced it)


def reply_and_time(slot: EngineSlot, job: ReplyJob, post: Post) -> None:
    """The reply worker: `run_reply` under the slot's lock (unless the app is closing), then
    `time_target_alone`; a failed reply posts `ReplyFailed`, a failed timing is only logged."""
    with slot.lock:
        if slot.closed:
            return
        try:
            done = run_reply(job, post)
        except SvipError as exc:
            post(ReplyFailed(str(exc)))
            return
        except Exception as exc:  # the app shows every failure instead of dying
            log.exception("reply failed")
            post(ReplyFailed(f"unexpected error: {exc!r}"))
            return
        if done is not None:
            try:
                time_target_alone(job, done, post)
            except SvipError as exc:
                log.warning("could not time the target alone: %s", exc)


def run_reply(job: ReplyJob, post: Post) -> Done | None:
    """Stream one reply: chunks of whole draft-and-verify rounds, at most one per
    `UPDATE_INTERVAL_S` (the first at once: it ends the wait for the reply), notices, then
    the `Done`, which it also returns."""
    start = perf_counter()
    last_post = start - UPDATE_INTERVAL_S
    live = LiveStats()
    pieces: list[tuple[str, bool]] = []

    def flush() -> None:
        nonlocal last_post
        if pieces:
            post(ReplyChunk(tuple(pieces), replace(live)))
            pieces.clear()
        last_post = perf_counter()
    events = stream_chat(job.engine, job.messages, max_tokens=job.settings.max_tokens,
                         sampling=job.settings.sampling, policy=job.policy, cancel=job.cancel,
                         template=job.template)
    for event in events:
        if isinstance(event, Token):
            pieces.append((event.text, event.from_draft))
            live.generated += 1
        elif isinstance(event, Round):
            live.rounds += 1
            live.drafted += event.drafted
            live.accepted += event.accepted
            now = perf_counter()
            live.elapsed_s = now - start
            if now - last_post >= UPDATE_INTERVAL_S:
                flush()
        elif isinstance(event, Notice):
            flush()
            post(ReplyNotice(event.message))
        elif isinstance(event, Done):
            flush()
            post(ReplyDone(event))
            return event
    return None


def time_target_alone(job: ReplyJob, done: Done, post: Post) -> None:
    """After a reply long enough to compare and not priced by `auto` itself: time the target
    alone at the context the reply ended at (a few decodes: see measure_target_alone)."""
    if (not job.time_target or job.cancel.is_set() or done.stats.generated < MIN_TOKENS
            or live_estimate(done.stats) is not None
            or not job.policy.for_sampling(job.settings.sampling).speculates):
        return
    rate = measure_target_alone(job.engine, cancel=job.cancel)
    if rate:
        post(TargetTimed(job.engine, done.stats, 1 / rate))
