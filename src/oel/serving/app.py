"""The one HTTP layer of `oel serve` and `oel gateway`: a Starlette app over an engine (and a store).

Routes are thin (vLLM's shape): each validates its body with the pydantic models of
oel.serving.protocol, asks the engine (oel.serving.engine) and, in the gateway, the store, and
answers. What every route shares is `EdgeMiddleware`, before any route runs:

  route lookup -> API key (401) -> rate limit (429) -> body framing and size (400/413)
  -> the body, read within `client_timeout_s` (408) -> one JSON object of valid Unicode (400)

and it maps every exception to an OpenAI error body (RequestError keeps its status; the store's
ConflictError 409, NotFoundError 404, DataError 400, sqlite3.Error 503 + Retry-After; anything
else 500) and counts every answer by endpoint and status for /metrics.

`oel serve` is the mode without a store (`ServingState.store is None`): the same routes, minus
the store's endpoints. With a store every chat exchange is recorded before its answer ends: a
non-streamed answer after the exchange is stored; a streamed one sends its tokens as they are
generated and its final chunk (finish_reason) and `data: [DONE]` only after the exchange is
stored (a failed record ends the stream with an error event instead of [DONE]).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, Router

from oel.collect.auth import ApiKeys
from oel.errors import DataError
from oel.online.errors import ConflictError, NotFoundError
from oel.online.intake import AUTO_SESSION_PREFIX
from oel.online.sessions import parse_messages as check_prompt
from oel.online.store import MAX_NAME_CHARS, Store
from oel.serving.engine import Answer, Engine
from oel.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from oel.serving.metrics import ServerMetrics
from oel.serving.protocol import (
    RETRY_AFTER_S,
    SSE_DONE,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    RequestError,
    Usage,
    bad,
    completion_id,
    error_body,
    json_object,
    show,
)

log = logging.getLogger(__name__)

SESSION_HEADER = "X-OEL-Session"
VERSION_HEADER = "X-OEL-Model-Version"
IDEMPOTENCY_HEADER = "Idempotency-Key"
LOCAL_CLIENT = "local"
"""The client name recorded when no key is configured (loopback-only servers)."""
Access = Literal["public", "client", "admin"]
_SESSION_END = re.compile(r"/v1/sessions/([^/]+)/end")
_END_FIELDS = frozenset({"outcome", "passed", "env_id"})


class RateLimit(Protocol):
    def wait_s(self, client: str) -> float: ...


@dataclass
class ServingState:
    """Everything the routes need: who may call, who answers, where exchanges go, the limits."""

    realm: str  # "oel serve" | "oel gateway": the 401 challenge's realm
    served_name: str
    api_keys: ApiKeys
    admin_keys: ApiKeys  # /metrics; `oel serve` passes its client keys
    engine: Engine | None
    store: Store | None
    metrics: ServerMetrics
    max_body_bytes: int
    max_tokens_limit: int
    client_timeout_s: float
    request_timeout_s: float
    rate_limiter: RateLimit | None = None
    rate_limit_per_s: float = 0.0

    @property
    def version(self) -> int:
        return self.engine.version if self.engine is not None else 0


@dataclass(frozen=True)
class Endpoint:
    method: str
    access: Access
    needs_store: bool = False


ENDPOINTS = {"/healthz": Endpoint("GET", "public"), "/metrics": Endpoint("GET", "admin"),
             "/v1/models": Endpoint("GET", "client"), "/v1/chat/completions": Endpoint("POST", "client"),
             "/v1/trajectories": Endpoint("POST", "client", needs_store=True),
             "/v1/sessions/{id}/end": Endpoint("POST", "client", needs_store=True)}


def error_status(e: Exception) -> RequestError:
    """The HTTP answer to an exception raised while serving a request."""
    if isinstance(e, RequestError):
        return e
    if isinstance(e, ConflictError):
        return RequestError(409, str(e))
    if isinstance(e, NotFoundError):
        return RequestError(404, str(e))
    if isinstance(e, DataError):
        return RequestError(400, str(e), param=str(e).split(":", 1)[0])
    if isinstance(e, sqlite3.Error):
        return RequestError(503, f"store unavailable ({type(e).__name__}); retry", retry_after_s=RETRY_AFTER_S)
    return RequestError(500, f"{type(e).__name__}: {e}")


def error_response(e: RequestError, headers: dict[str, str] | None = None, close: bool = False) -> JSONResponse:
    hdrs = dict(headers or {})
    if e.retry_after_s is not None:
        hdrs["Retry-After"] = str(e.retry_after_s)
    if close:  # the body was not read: its bytes would parse as the next request
        hdrs["Connection"] = "close"
    return JSONResponse(error_body(e.status, str(e), e.param), status_code=e.status, headers=hdrs)


class EdgeMiddleware:
    """Routing, keys, limits and the body, for every route (see the module docstring)."""

    def __init__(self, app: Any, state: ServingState) -> None:
        self.app, self.state = app, state
        self.paths = ", ".join(f"{e.method} {p}" for p, e in ENDPOINTS.items()
                               if state.store is not None or not e.needs_store)

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False
        endpoint = "other"

        async def counted(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.state.metrics.count_request(endpoint, message["status"])
            await send(message)

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        scope["state"]["headers"] = headers
        try:
            endpoint, access = self._route(scope)
            client = self._authorize(access, headers.get("authorization"), scope, endpoint)
            scope["state"]["client"] = client
            if access == "client" and self.state.rate_limiter is not None:
                wait = self.state.rate_limiter.wait_s(client)
                if wait > 0:
                    raise RequestError(429, f"rate limit: {self.state.rate_limit_per_s} requests/s for client "
                                            f"{client!r}", retry_after_s=max(1, math.ceil(wait)))
            if scope["method"] == "POST":
                scope["state"]["body"] = json_object(await self._read_body(scope, receive, headers))
            await self.app(scope, receive, counted)
        except Exception as e:  # noqa: BLE001 - every failure becomes an answer, logged when it is ours
            if started:
                raise
            err = error_status(e)
            if err.status >= 500 and not isinstance(e, RequestError):
                log.exception("%s %s failed", scope["method"], endpoint)
            extra = getattr(e, "headers", None)
            await error_response(err, extra, close=getattr(e, "close", False))(scope, receive, counted)

    def _route(self, scope: dict[str, Any]) -> tuple[str, Access]:
        """(endpoint name, access) of a known path and method; else 404/405 (after the key check)."""
        path = scope["path"].rstrip("/") or "/"
        name = "/v1/sessions/{id}/end" if _SESSION_END.fullmatch(path) else path
        endpoint = ENDPOINTS.get(name)
        if endpoint is None or (endpoint.needs_store and self.state.store is None):
            self._authorize("client", scope["state"]["headers"].get("authorization"), scope, "other")
            raise RequestError(404, f"{path}: not found ({self.paths})")
        scope["state"]["endpoint"] = name
        if scope["method"] != endpoint.method:
            self._authorize(endpoint.access, scope["state"]["headers"].get("authorization"), scope, name)
            raise _with_headers(RequestError(405, f"{path}: use {endpoint.method}"), {"Allow": endpoint.method})
        return name, endpoint.access

    def _authorize(self, access: Access, authorization: str | None, scope: dict[str, Any], endpoint: str) -> str:
        """The client's name; 401 with a challenge when the key is missing or wrong (never logged)."""
        s = self.state
        if access == "public" or not (s.api_keys or s.admin_keys):
            return LOCAL_CLIENT
        keys = s.admin_keys if access == "admin" else s.api_keys
        client = keys.client(authorization)
        if client is not None:
            return client
        challenge = f'Bearer realm="{s.realm}"' + (', error="invalid_token"' if authorization else "")
        log.info("%s: %s %s refused: %s key", (scope.get("client") or ("?",))[0], scope["method"], endpoint,
                 "wrong" if authorization else "no")
        what = "an admin key" if access == "admin" and s.admin_keys is not s.api_keys else "a client key"
        raise _with_headers(RequestError(401, f"missing or invalid API key; send `Authorization: Bearer <key>` "
                                              f"with {what}"), {"WWW-Authenticate": challenge})

    async def _read_body(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                         headers: dict[str, str]) -> bytes:
        """The whole body, bounded in size and in time: 400/413/408 (closing) otherwise."""
        if "transfer-encoding" in headers:
            raise _closing(RequestError(400, "Transfer-Encoding: chunked bodies are not supported; send a "
                                             "Content-Length"))
        if "content-length" not in headers:
            raise _closing(RequestError(400, "Content-Length: required on POST"))
        length = int(headers["content-length"])  # h11 has checked it is one non-negative integer
        limit = self.state.max_body_bytes
        if length > limit:
            raise _closing(RequestError(413, f"request body of {length} bytes exceeds {limit}"))
        chunks: list[bytes] = []
        got, more = 0, length > 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.state.client_timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise _closing(RequestError(408, f"body: not received within {self.state.client_timeout_s}s")) from None
            if message["type"] == "http.disconnect":
                raise _closing(RequestError(400, "body: the client went away"))
            chunks.append(message.get("body", b""))
            got += len(chunks[-1])
            more = message.get("more_body", False)
            if more and scope["state"].get("client_eof"):
                raise _closing(RequestError(400, f"body: {got} bytes received, Content-Length said {length}"))
        return b"".join(chunks)


def _with_headers(e: RequestError, headers: dict[str, str]) -> RequestError:
    e.headers = headers  # type: ignore[attr-defined]
    return e


def _closing(e: RequestError) -> RequestError:
    e.close = True  # type: ignore[attr-defined]
    return e


# ---- routes --------------------------------------------------------------------------------

def build_app(state: ServingState) -> Any:
    """The ASGI app of one server: Starlette routes inside the edge middleware."""
    routes = [Route("/healthz", partial(_healthz, state), methods=["GET"]),
              Route("/metrics", partial(_metrics, state), methods=["GET"]),
              Route("/v1/models", partial(_models, state), methods=["GET"]),
              Route("/v1/chat/completions", partial(_chat, state), methods=["POST"])]
    if state.store is not None:
        routes += [Route("/v1/trajectories", partial(_trajectory, state), methods=["POST"]),
                   Route("/v1/sessions/{session_id}/end", partial(_end_session, state), methods=["POST"])]
    # A bare Router, not a Starlette app: exceptions reach EdgeMiddleware, which answers them.
    # Paths differing by a trailing slash are the same endpoint (the middleware matched them).
    inner = Router(routes=routes, redirect_slashes=False)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["path"] = scope["path"].rstrip("/") or "/"
        await inner(scope, receive, send)

    return EdgeMiddleware(app, state)


async def _healthz(state: ServingState, request: Request) -> Response:
    return JSONResponse({"status": "ok", "model_version": state.version})


async def _metrics(state: ServingState, request: Request) -> Response:
    text = await asyncio.to_thread(state.metrics.render)  # reads the store's counters
    return Response(text, media_type=METRICS_CONTENT_TYPE)


async def _models(state: ServingState, request: Request) -> Response:
    version = state.version if state.store is not None else None
    body = ModelList(data=[ModelCard(id=state.served_name, oel_model_version=version)])
    headers = {VERSION_HEADER: str(state.version)} if state.store is not None else {}
    return Response(body.model_dump_json(exclude_none=True), media_type="application/json", headers=headers)


def session_header(value: str | None) -> str | None:
    """The client's session id, checked before any generation is spent on the request."""
    if value is None:
        return None
    if not value or len(value) > MAX_NAME_CHARS:
        raise RequestError(400, f"{SESSION_HEADER}: expected 1..{MAX_NAME_CHARS} characters", param=SESSION_HEADER)
    if value.startswith(AUTO_SESSION_PREFIX):
        raise RequestError(400, f"{SESSION_HEADER}: ids starting with '{AUTO_SESSION_PREFIX}' name stitched sessions "
                           "and are chosen by the gateway", param=SESSION_HEADER)
    return value


async def _chat(state: ServingState, request: Request) -> Response:
    body = request.scope["state"]["body"]
    req = ChatCompletionRequest.parse(body, state.max_tokens_limit)
    messages, params = req.chat(), req.sampling(state.max_tokens_limit)
    session_id = None
    if state.store is not None:
        try:
            check_prompt(messages)
        except ValueError as e:
            raise RequestError(400, str(e), param="messages") from None
        session_id = session_header(request.scope["state"]["headers"].get(SESSION_HEADER.lower()))
    if state.engine is None:
        raise RequestError(404, "chat: this gateway takes trajectories only (responder=none)")
    await state.engine.check(messages, params)
    client = request.scope["state"]["client"]
    if req.stream:
        return _stream(state, client, messages, params, body, session_id, req.include_usage)
    try:
        answer = await asyncio.wait_for(state.engine.submit(messages, params, body), state.request_timeout_s)
    except TimeoutError:
        raise RequestError(504, f"no answer within {state.request_timeout_s}s") from None
    headers = await _record(state, client, messages, answer, session_id)
    out = ChatCompletionResponse.of(answer.generation, state.served_name, completion_id())
    return Response(out.model_dump_json(), media_type="application/json", headers=headers)


async def _record(state: ServingState, client: str, messages: list[Any], answer: Answer,
                  session_id: str | None) -> dict[str, str]:
    """Store the exchange (gateway mode) before its answer is complete; its headers."""
    if state.store is None:
        return {}
    gen = answer.generation
    recorded = await asyncio.to_thread(
        state.store.record_exchange, client, messages, gen.text, session_id=session_id,
        model_id=f"{state.served_name}@v{answer.version}", prompt_tokens=gen.prompt_tokens,
        response_tokens=gen.completion_tokens)
    return {SESSION_HEADER: recorded.session_id, VERSION_HEADER: str(answer.version)}


def _stream(state: ServingState, client: str, messages: list[Any], params: Any, body: dict[str, Any],
            session_id: str | None, include_usage: bool) -> StreamingResponse:
    """Server-sent events, token by token as the engine samples them (the request is queued now)."""
    assert state.engine is not None
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str] = asyncio.Queue()
    arrived = time.monotonic()
    answer = state.engine.submit(messages, params, body, lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text))
    cid, created = completion_id(), int(time.time())

    def chunk(delta: Delta, finish: str | None = None, **extra: Any) -> bytes:
        return ChatCompletionChunk(id=cid, created=created, model=state.served_name,
                                   choices=[ChunkChoice(delta=delta, finish_reason=finish)], **extra).sse()

    async def events() -> AsyncIterator[bytes]:
        yield chunk(Delta(role="assistant", content=""))
        sent, first = "", True
        while not (answer.done() and pieces.empty()):
            getter = asyncio.ensure_future(pieces.get())
            done, _ = await asyncio.wait({getter, answer}, timeout=state.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if not done:
                    yield _error_event(RequestError(504, f"no answer within {state.request_timeout_s}s"))
                    return
                continue
            if first:
                state.metrics.first_token.observe(time.monotonic() - arrived)
                first = False
            sent += getter.result()
            yield chunk(Delta(content=getter.result()))
        try:
            result = answer.result()
            headers = await _record(state, client, messages, result, session_id)
        except Exception as e:  # noqa: BLE001 - the stream's status is sent: the error goes as an event
            err = error_status(e)
            if err.status >= 500 and not isinstance(e, RequestError):
                log.exception("streamed chat completion failed")
            yield _error_event(err)
            return
        gen = result.generation
        if gen.text.startswith(sent) and len(gen.text) > len(sent):
            yield chunk(Delta(content=gen.text[len(sent):]))
        elif not gen.text.startswith(sent):
            log.warning("streamed text is not a prefix of the final answer (a failed batch rerun alone?)")
        yield chunk(Delta(), gen.finish_reason)
        if include_usage:
            yield ChatCompletionChunk(id=cid, created=created, model=state.served_name, choices=[],
                                      usage=Usage.of(gen)).sse()
        if headers:
            log.debug("streamed exchange recorded in session %s", headers[SESSION_HEADER])
        yield SSE_DONE

    headers = {"Cache-Control": "no-cache"}
    if session_id is not None:
        headers[SESSION_HEADER] = session_id
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _error_event(err: RequestError) -> bytes:
    return b"data: " + json.dumps(error_body(err.status, str(err), err.param)).encode() + b"\n\n"


async def _trajectory(state: ServingState, request: Request) -> Response:
    assert state.store is not None
    s = request.scope["state"]
    added = await asyncio.to_thread(state.store.add_trajectory, s["client"], s["body"],
                                    idempotency_key=s["headers"].get(IDEMPOTENCY_HEADER.lower()))
    return JSONResponse({"id": added.trajectory_id, "duplicate": added.duplicate},
                        status_code=200 if added.duplicate else 201)


async def _end_session(state: ServingState, request: Request) -> Response:
    assert state.store is not None
    s = request.scope["state"]
    body = s["body"]
    extra = sorted(set(body) - _END_FIELDS)
    if extra:
        raise bad(extra[0], f"unknown field (a session end has {', '.join(sorted(_END_FIELDS))})")
    if not isinstance(body.get("outcome"), str):
        raise bad("outcome", f"expected a string, got {show(body.get('outcome'))}")
    kwargs = {"env_id": body["env_id"]} if body.get("env_id") is not None else {}
    session_id = unquote(request.path_params["session_id"])
    added = await asyncio.to_thread(state.store.end_session, s["client"], session_id, body["outcome"],
                                    body.get("passed"), **kwargs)
    return JSONResponse({"id": added.trajectory_id, "duplicate": added.duplicate},
                        status_code=200 if added.duplicate else 201)
