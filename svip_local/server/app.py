"""The ASGI application: OpenAI's chat and text completion endpoints around one Engine.

Requests are parsed and validated on the event loop, then queued to the worker (as many
generations at once as the engine has slots). A request answers only once its generation has
produced its first event, so that errors found there (a prompt too long for the context, a
chat template that refuses the messages) are proper 400s even for streaming requests.
Prompt-prefix reuse between turns of a conversation needs nothing here: the engine puts a
request in the slot whose KV cache shares the longest prefix with it.

Shutdown starts with `ServerApp.shutdown()`, which the server calls as soon as it is asked to
stop: every generation is cancelled (the engine stops it within a round), so each stream still
ends with its finish chunk and `[DONE]`, a non-streamed request that was cut gets a 503, and
none of them is left for the server's graceful-shutdown timeout to kill.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from svip_local import (
    Constraint,
    Done,
    Engine,
    Event,
    InvalidRequestError,
    Notice,
    SvipError,
    Token,
    ToolCall,
    ToolCallDelta,
)
from svip_local.chat import ChatTemplate, stream_chat
from svip_local.server.access import AccessLog, ASGIApp
from svip_local.server.errors import ApiError, from_engine_error, from_validation_error
from svip_local.server.responses import Reply, ToolCallChunks, sse
from svip_local.server.schemas import ChatCompletionRequest, CompletionRequest
from svip_local.server.worker import (
    Generation,
    GenerationWorker,
    Job,
    ServerBusyError,
    ServerShuttingDownError,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 8
DEFAULT_MAX_REQUEST_BYTES = 1 << 20  # 1 MiB: a long conversation is far smaller

_R = TypeVar("_R", bound=BaseModel)


def create_app(engine: Engine, *, model_name: str, api_key: str | None = None,
               aliases: Sequence[str] = (), max_queue: int = DEFAULT_MAX_QUEUE,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> ServerApp:
    """The server for one loaded pair, answering to `model_name` and `aliases` (any other
    `model` gets OpenAI's 404 model_not_found). `api_key`: when set, /v1 requires it as a
    Bearer token (/health stays open for supervisors). Every request is logged (`access`).
    `engine.parallel` requests generate at once; `max_queue` more may wait for them."""
    worker = GenerationWorker(max_queue, slots=engine.parallel)
    api = _Api(engine, model_name, tuple(aliases), api_key, worker, max_request_bytes)
    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/v1/models", api.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", api.get_model, methods=["GET"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
    ]
    handlers: dict[Any, Any] = {ApiError: _api_error, SvipError: _svip_error,
                                HTTPException: _http_error, Exception: _internal_error}
    return ServerApp(Starlette(routes=routes, exception_handlers=handlers,
                               lifespan=api.lifespan), worker)


class ServerApp(AccessLog):
    """The ASGI application, and the hook its server calls when it begins to shut down."""

    def __init__(self, app: ASGIApp, worker: GenerationWorker) -> None:
        super().__init__(app)
        self._worker = worker

    def shutdown(self) -> None:
        """End every request's generation now, each with a proper answer, and refuse new ones
        (503): uvicorn runs the lifespan shutdown only once the connections have closed, or
        its timeout has cut them with a bare 500. Any thread, never blocks (but it takes a
        lock: not from a signal handler)."""
        self._worker.shutdown()


class _Api:
    def __init__(self, engine: Engine, model_name: str, aliases: tuple[str, ...],
                 api_key: str | None, worker: GenerationWorker, max_request_bytes: int) -> None:
        self.engine = engine
        self.model_name = model_name
        self.names = {model_name, *aliases}
        self.api_key = api_key
        self.worker = worker
        self.max_request_bytes = max_request_bytes
        self.created = int(time.time())
        self.template = ChatTemplate.for_engine(engine)  # resolved once, not per turn

    @asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(self.worker.stop)

    # -- small endpoints -------------------------------------------------------------------

    async def health(self, _request: Request) -> Response:
        running, waiting = self.worker.load()
        return JSONResponse({"status": "ok", "model": self.model_name,
                             "slots": self.worker.slots, "generating": running,
                             "queued": waiting, "max_queue": self.worker.max_queue})

    async def list_models(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse({"object": "list", "data": [self._model_object()]})

    async def get_model(self, request: Request) -> Response:
        self._authorize(request)
        self._check_model(request.path_params["model"])
        return JSONResponse(self._model_object())

    def _check_model(self, name: str | None) -> None:
        if name is not None and name not in self.names:
            also = sorted(self.names - {self.model_name})
            known = f"'{self.model_name}'" + (f" (also as {', '.join(also)})" if also else "")
            raise ApiError(404, f"The model '{name}' does not exist; this server serves "
                                f"{known}", param="model", code="model_not_found")

    def _model_object(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created,
                "owned_by": "svip-local"}

    # -- generation endpoints --------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        req = await self._parse(request, ChatCompletionRequest)
        self._check_model(req.model)
        sampling, stops, messages = req.sampling(), req.stops(), req.template_messages()
        max_tokens = req.token_limit() or self.engine.n_ctx
        constraint = _constraint(req, "response_format" if req.grammar is None else "grammar")
        tools, tool_choice = req.tool_dicts(), req.tool_choice_value()

        def generation(cancel: threading.Event) -> Iterator[Event]:
            return stream_chat(self.engine, messages, max_tokens=max_tokens, sampling=sampling,
                               cancel=cancel, stop=stops, template=self.template, tools=tools,
                               tool_choice=tool_choice,
                               parallel_tool_calls=req.parallel_tool_calls,
                               constraint=constraint)

        reply = Reply.new(chat=True, model=self.model_name)
        return await self._respond(request, generation, reply, req)

    async def completions(self, request: Request) -> Response:
        self._authorize(request)
        req = await self._parse(request, CompletionRequest)
        self._check_model(req.model)
        sampling, stops, prompt = req.sampling(), req.stops(), req.engine_prompt()
        constraint = _constraint(req, "grammar")

        def generation(cancel: threading.Event) -> Iterator[Event]:
            return self.engine.generate(prompt, max_tokens=req.max_tokens, sampling=sampling,
                                        stop=stops, cancel=cancel, constraint=constraint)

        reply = Reply.new(chat=False, model=self.model_name)
        return await self._respond(request, generation, reply, req)

    async def _respond(self, request: Request, generation: Generation, reply: Reply,
                       req: ChatCompletionRequest | CompletionRequest) -> Response:
        try:
            job = self.worker.submit(generation)
        except ServerBusyError as exc:
            raise ApiError(503, str(exc), kind="server_error", code="server_busy",
                           headers={"Retry-After": "1"}) from None
        except ServerShuttingDownError:
            raise _shutting_down() from None
        try:
            async with _cancel_on_disconnect(request, job):
                try:
                    first = await job.next_event()
                except SvipError as exc:
                    prompt = "messages" if reply.chat else "prompt"
                    raise from_engine_error(exc, prompt) from exc
                except ServerShuttingDownError:
                    raise _shutting_down() from None
                if not req.stream:
                    done, notices = await _until_done(job, first, request)
                    if done is None:
                        return _client_gone()
                    if done.finish_reason == "cancelled" and job.shut_down:
                        raise _shutting_down()  # not a complete reply: the client may retry
                    return JSONResponse(reply.complete(done, notices, queued_s=job.queued_s))
        except BaseException:
            job.cancel()
            raise
        if first is None:
            return _client_gone()
        return StreamingResponse(
            _event_stream(job, first, reply, req.include_usage, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- request plumbing ------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 self.api_key.encode()):
            raise ApiError(401, "Incorrect API key provided (send it as "
                                "'Authorization: Bearer KEY').", code="invalid_api_key")

    async def _parse(self, request: Request, model: type[_R]) -> _R:
        """Read at most max_request_bytes (checked as the body arrives: a Content-Length can
        lie or be absent) and validate it."""
        limit = self.max_request_bytes
        too_big = ApiError(413, f"The request body is larger than this server's limit of "
                                f"{limit} bytes.", code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_big
        try:
            return model.model_validate_json(bytes(body))
        except ValidationError as exc:
            raise from_validation_error(exc) from None


def _constraint(req: ChatCompletionRequest | CompletionRequest, param: str
                ) -> Constraint | None:
    """The request's constraint, compiled before it queues: a bad one is a 400 naming
    `param` even while the engine is busy."""
    try:
        return req.constraint()
    except InvalidRequestError as exc:
        raise ApiError(400, str(exc), param=param) from exc


@asynccontextmanager
async def _cancel_on_disconnect(request: Request, job: Job) -> AsyncIterator[None]:
    """Cancel the job if the client goes away while we wait for its events.

    Once the body is read, `receive` answers only `http.disconnect`; a streaming response
    takes over this watch when it starts (Starlette listens for the same message).
    """
    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()


async def _until_done(job: Job, first: Event | None, request: Request
                      ) -> tuple[Done | None, list[str]]:
    """The generation's Done (None if it never came) and its notices' messages."""
    notices: list[str] = []
    event = first
    while event is not None and not isinstance(event, Done):
        if isinstance(event, Notice):
            notices.append(event.message)
        event = await job.next_event()
    if event is not None:
        _log_done(event, request)
    return event, notices


async def _event_stream(job: Job, first: Event, reply: Reply, include_usage: bool,
                        request: Request) -> AsyncIterator[bytes]:
    """SSE chunks: text and tool-call deltas, the finish chunk, then `[DONE]`.

    A client that disconnects makes Starlette cancel this generator: `finally` cancels the
    generation. An error after the first chunk cannot change the status any more, so it is
    sent the way OpenAI does it, as an `error` event.
    """
    shown = 0  # characters sent so far
    notices: list[str] = []
    calls = ToolCallChunks(reply)
    try:
        opening = reply.opening()
        if opening is not None:
            yield sse(opening)
        event: Event | None = first
        while event is not None:
            if isinstance(event, Token) and event.text:
                shown += len(event.text)
                yield sse(reply.delta(event.text))
            elif isinstance(event, ToolCallDelta | ToolCall):
                for chunk in calls.chunks(event):
                    yield sse(chunk)
            elif isinstance(event, Notice):
                notices.append(event.message)
            elif isinstance(event, Done):
                # Text held back (a partial stop string or UTF-8 sequence) comes with Done.
                tail = event.text[shown:]
                if tail:
                    yield sse(reply.delta(tail))
                for chunk in (c for call in event.tool_calls for c in calls.chunks(call)):
                    yield sse(chunk)
                for chunk in reply.closing(event, notices, include_usage=include_usage,
                                           queued_s=job.queued_s):
                    yield sse(chunk)
                _log_done(event, request)
                break
            event = await job.next_event()
        yield sse("[DONE]")
    except SvipError as exc:
        log.warning("generation failed mid-stream: %s", exc)
        yield sse(from_engine_error(exc).body())
    except Exception:
        log.exception("generation failed mid-stream")
        yield sse(ApiError(500, "internal error during generation",
                           kind="server_error").body())
    finally:
        job.cancel()  # a no-op once the generation has ended


def _log_done(done: Done, request: Request) -> None:
    s = done.stats
    request.state.generated = s.generated  # for the access log
    log.info("%s: %d+%d tokens (%d from cache), %.1f tok/s, acceptance %.0f%%",
             done.finish_reason, s.prompt_tokens, s.generated, s.prompt_tokens - s.prefill_tokens,
             s.tokens_per_second, 100 * s.acceptance_rate)


def _shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down; retry this request later (or on "
                         "another server)", kind="server_error", code="server_shutting_down",
                    headers={"Retry-After": "1"})


def _client_gone() -> Response:
    """Nobody will read this: the client disconnected before its generation produced text."""
    return Response(status_code=499)


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _svip_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SvipError)
    return await _api_error(request, from_engine_error(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    error = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                     code=code, headers=dict(exc.headers) if exc.headers else None)
    return await _api_error(request, error)


async def _internal_error(_request: Request, _exc: Exception) -> Response:
    """A bug of ours: the client gets OpenAI's 500 shape, uvicorn logs the traceback."""
    return JSONResponse(ApiError(500, "internal server error", kind="server_error").body(),
                        status_code=500)
