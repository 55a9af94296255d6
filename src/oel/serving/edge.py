"""What every route of the serving stack shares, in one ASGI middleware before any route runs.

    header size (431) -> route lookup -> API key (401) -> rate limit (429) -> body framing and size (400/413)
    -> the body, read within `client_timeout_s` of its headers (408) -> one JSON object of
       valid Unicode (400)

Every exception becomes an OpenAI error body (RequestError keeps its status; the store's
ConflictError 409, NotFoundError 404, DataError 400, sqlite3.Error 503 + Retry-After; anything
else 500, logged), and every answer is counted by endpoint and status for /metrics. An answer
to a request whose body was not read and must not be drained (408, 413, chunked) says
`Connection: close` (oel.serving.server then closes after a lingering drain).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import unquote

from starlette.responses import JSONResponse

from oel.errors import ConflictError, DataError, NotFoundError
from oel.serving.auth import ApiKeys
from oel.serving.engine import Engine
from oel.serving.metrics import ServerMetrics
from oel.serving.protocol import RETRY_AFTER_S, RequestError, error_body, json_object

log = logging.getLogger(__name__)

LOCAL_CLIENT = "local"
"""The client name recorded when no key is configured (loopback-only servers)."""
Access = Literal["public", "client", "admin"]
MAX_HEADER_BYTES = 16 << 10
"""The most header bytes a request may carry (h11's own bound on a head still arriving)."""
SESSION_END = re.compile(r"/v1/sessions/([^/]+)/end")


class RateLimit(Protocol):
    def wait_s(self, client: str) -> float: ...


class ExchangeStore(Protocol):
    """What the routes ask of the gateway's store (oel.online.store.Store is the one there is)."""

    def record_exchange(self, client: str, messages: Any, response: str, **details: Any) -> Any: ...

    def end_session(self, client: str, session_id: str, outcome: str, passed: bool | None = None,
                    **details: Any) -> Any: ...

    def add_trajectory(self, client: str, trajectory: Any, **details: Any) -> Any: ...


@dataclass
class ServingState:
    """Everything the routes need: who may call, who answers, where exchanges go, the limits."""

    realm: str  # "oel serve" | "oel gateway": the 401 challenge's realm
    served_name: str
    api_keys: ApiKeys
    admin_keys: ApiKeys  # /metrics; `oel serve` passes its client keys
    engine: Engine | None
    store: ExchangeStore | None
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
            size = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
            if size > MAX_HEADER_BYTES:  # h11 bounds a head that arrives in pieces; this, one read at once
                raise _closing(RequestError(431, f"request headers: {size} bytes, more than {MAX_HEADER_BYTES}"))
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
            endpoint = scope["state"].get("endpoint", endpoint)  # a 401/405 on a known route counts there
            if err.status >= 500 and not isinstance(e, RequestError):
                log.exception("%s %s failed", scope["method"], endpoint)
            extra = getattr(e, "headers", None)
            await error_response(err, extra, close=getattr(e, "close", False))(scope, receive, counted)

    def _route(self, scope: dict[str, Any]) -> tuple[str, Access]:
        """(endpoint name, access) of a known path and method; else 404/405 (after the key check)."""
        path = scope["path"].rstrip("/") or "/"
        # A session id may hold an encoded '/' (ids are the client's text): match the raw path.
        raw = scope.get("raw_path", b"").decode("latin-1").rstrip("/")
        session = SESSION_END.fullmatch(raw)
        if session:
            scope["state"]["session_id"] = unquote(session.group(1))
            path = raw
        name = "/v1/sessions/{id}/end" if session else path
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


