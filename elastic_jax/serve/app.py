"""The HTTP API (FastAPI): /v1/models, /v1/completions, /v1/chat/completions (whole or streamed as server-sent
events ending `data: [DONE]`), /health and /metrics. Every error is OpenAI's error object with one message. The
handlers never touch JAX: they validate, submit a job to the scheduler and relay its events."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from elastic_jax.serve.errors import ApiError
from elastic_jax.serve.jobs import LENGTH, Job
from elastic_jax.serve.metrics import ServerMetrics
from elastic_jax.serve.models import ModelNames
from elastic_jax.serve.protocol import CHAT, COMPLETION, GenRequest, parse_request
from elastic_jax.serve.responses import DONE, ResponseWriter, event
from elastic_jax.serve.scheduler import Scheduler

DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there


class ClientGone(Exception):
    """The client disconnected before its (non-streamed) answer was ready."""


@dataclasses.dataclass
class ServerState:
    scheduler: Scheduler
    names: ModelNames
    metrics: ServerMetrics
    encode: Callable[[str], list[int]]  # a completion's prompt text -> token ids
    chat: Callable[[list], list[int]]  # a conversation -> the prompt of the assistant's next turn
    vocab: int
    context: int  # prompt + max_tokens, at most
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON: 413 beyond `limit` bytes (checked while reading, whatever Content-Length says), 400 for
    what is not JSON."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {declared} bytes; the limit is {limit} bytes")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise ApiError(413, f"the request body exceeds the limit of {limit} bytes")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}") from None
    except RecursionError:
        raise ApiError(400, "the request body nests JSON too deeply") from None


def check_key(state: ServerState, request: Request) -> None:
    if state.api_key is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {state.api_key}".encode()):
        raise ApiError(401, "invalid or missing API key: send the header 'Authorization: Bearer <key>'",
                       code="invalid_api_key")


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="elastic_jax", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        state.metrics.rejected.labels(str(err.status)).inc()
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return await api_error(request, ApiError(err.status_code, f"{request.method} {request.url.path}: "
                                                                  f"{err.detail}"))

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, err: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's code for "client closed the request"

    @app.get("/health")
    async def health() -> Response:
        if state.scheduler.error is not None:
            return JSONResponse(ApiError(503, "the scheduler stopped").body(), status_code=503)
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        check_key(state, request)
        return state.names.listing(state.created)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(state, request, COMPLETION)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(state, request, CHAT)

    return app


async def generate(state: ServerState, request: Request, kind: str) -> Response:
    check_key(state, request)
    body = await read_json(request, state.max_body_bytes)
    req = parse_request(body, kind, parse_model=state.names.parse, encode=state.encode, chat=state.chat,
                        vocab=state.vocab, context=state.context)
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    job = Job(req, emit=relay(loop, events))
    state.scheduler.submit(job)
    first = await next_event(state, request, job, events)
    if first["type"] == "error":
        raise first["error"]
    writer = ResponseWriter(kind, first.get("model", req.model))  # none: ended by the shutdown before it began
    if first["type"] == "done":
        events.put_nowait(first)
    if req.stream:
        return StreamingResponse(stream(state, job, req, writer, events), media_type="text/event-stream")
    text = []
    while True:
        ev = await next_event(state, request, job, events)
        if ev["type"] == "text":
            text.append(ev["text"])
        elif ev["type"] == "done":
            return JSONResponse(writer.whole("".join(text), ev["finish_reason"], ev["usage"]))
        else:
            raise ev["error"]


def relay(loop: asyncio.AbstractEventLoop, events: asyncio.Queue) -> Callable[[dict], None]:
    """The scheduler thread's way to hand an event to a handler; once the server's loop is closed (shutdown),
    nobody is listening and the event is dropped."""
    def emit(event: dict) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(events.put_nowait, event)
    return emit


async def event_or_deadline(state: ServerState, job: Job, events: asyncio.Queue) -> dict | None:
    """The job's next event, or None after a poll interval. Past the shutdown grace the job ends here with
    `length`, even while the scheduler is still inside a long step, so that every client gets its finish."""
    try:
        return await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
    except TimeoutError:
        if not state.scheduler.past_deadline():
            return None
        state.scheduler.cancel(job)
        return {"type": "done", "finish_reason": LENGTH, "usage": job.usage()}


async def next_event(state: ServerState, request: Request, job: Job, events: asyncio.Queue) -> dict:
    """The job's next event; if the client leaves meanwhile, the job is cancelled (its slot freed) and the
    handler ends."""
    while True:
        event = await event_or_deadline(state, job, events)
        if event is not None:
            return event
        if await request.is_disconnected():
            state.scheduler.cancel(job)
            raise ClientGone


async def stream(state: ServerState, job: Job, req: GenRequest, writer: ResponseWriter,
                 events: asyncio.Queue) -> AsyncIterator[str]:
    """SSE events of a streamed request. A client that disconnects cancels this generator (Starlette), and the
    `finally` frees the job's slot."""
    try:
        if writer.chat:
            yield writer.chunk("", role=True)
        while True:
            ev = await event_or_deadline(state, job, events)
            if ev is None:
                continue
            if ev["type"] == "text":
                yield writer.chunk(ev["text"])
            elif ev["type"] == "done":
                yield writer.chunk(None if writer.chat else "", ev["finish_reason"])
                if req.include_usage:
                    yield writer.usage_chunk(ev["usage"])
                yield DONE
                return
            else:
                yield event(ev["error"].body())
                yield DONE
                return
    finally:
        if not job.finished:
            state.scheduler.cancel(job)


__all__ = ["ServerState", "create_app"]
