"""What every route of the serving stack shares, in one ASGI middleware before any route runs.

    one of each identifying header, in UTF-8 (400) -> header size (431) -> route lookup
    -> API key (401; without a valid key, a per-address rate first: 429) -> a connection slot
    for a keyed request (503, oel.serving.admission) -> rate limit (429) -> body framing and
    size (400/413) -> the body, read within `client_timeout_s` of its headers (408) -> one JSON
    object of valid Unicode, nested at most MAX_JSON_DEPTH deep (400)

Every exception becomes an OpenAI error body (RequestError keeps its status; the store's
ConflictError 409, NotFoundError 404, DataError 400, sqlite3.Error 503 + Retry-After; anything
else 500, logged), and every answer is counted by endpoint and status for /metrics. An answer
to a request whose body was not read and must not be drained (408, 413, chunked, a body over
DRAIN_BYTES) says `Connection: close` (oel.serving.connection then closes after a lingering drain).

Every write of an answer must be taken by the client within `client_timeout_s`: a client that
stops reading (its socket buffers full) is cut off (ClientGone), instead of holding its
connection and its request for ever.
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
from oel.serving.admission import Admission, Peer
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
DRAIN_BYTES = 1 << 20
"""The most bytes of an unread body left for the server to discard after an error answer (401,
404, ...) to keep the connection; beyond, the answer closes the connection (lingering)."""
SESSION_END = re.compile(r"/v1/sessions/([^/]+)/end")
SINGLE_HEADERS = {"authorization": "Authorization", "x-oel-session": "X-OEL-Session",
                  "idempotency-key": "Idempotency-Key"}
"""Headers that identify who asks or what is asked about (by their spelling in messages): sent
twice, which one counts is a guess (a proxy and the server could each read another), so the
request is refused."""
UTF8_HEADERS = ("x-oel-session", "idempotency-key")
"""Headers whose value is the client's text (stored): UTF-8, refused otherwise (not read as latin-1)."""
CLIENT_GONE_STATUS = 499
"""Counted for /metrics when the client went before its answer was complete (nginx's code)."""


class ClientGone(Exception):
    """The client disconnected, or stopped reading its answer: nothing more can be sent to it."""


class RateLimit(Protocol):
    def wait_s(self, client: str) -> float: ...


class ExchangeStore(Protocol):
    """What the routes ask of the gateway's store (oel.online.store.Store is the one there is)."""

    def record_exchange(self, client: str, messages: Any, response: str, **details: Any) -> Any: ...

    def mark_incomplete(self, exchange_id: int) -> None: ...

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
    admission: Admission
    max_body_bytes: int
    max_tokens_limit: int
    client_timeout_s: float
    request_timeout_s: float
    rate_limiter: RateLimit | None = None
    rate_limit_per_s: float = 0.0

    @property
    def version(self) -> int:
        return self.engine.version if self.engine is not None else 0

    @property
    def keys_required(self) -> bool:
        return bool(self.api_keys or self.admin_keys)


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


def request_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request's headers by lower-case name; 400 for an identifying header sent twice or
    a text header that is not UTF-8."""
    headers: dict[str, str] = {}
    for key, value in raw:
        name = key.decode("latin-1")
        shown = SINGLE_HEADERS.get(name, name)
        if name in headers and name in SINGLE_HEADERS:
            raise RequestError(400, f"{shown}: sent more than once; send one", param=shown)
        try:
            headers[name] = value.decode("utf-8") if name in UTF8_HEADERS else value.decode("latin-1")
        except UnicodeDecodeError:
            raise RequestError(400, f"{shown}: not valid UTF-8", param=shown) from None
    return headers


def peer_of(scope: dict[str, Any]) -> Peer | None:
    client = scope.get("client")
    return (str(client[0]), int(client[1])) if client else None


class EdgeMiddleware:
    """Routing, keys, admission, limits and the body, for every route (see the module docstring)."""

    def __init__(self, app: Any, state: ServingState) -> None:
        self.app, self.state = app, state
        self.paths = ", ".join(f"{e.method} {p}" for p, e in ENDPOINTS.items()
                               if state.store is not None or not e.needs_store)

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        peer = peer_of(scope)
        self.state.admission.request_started(peer)
        try:
            await self._serve(scope, receive, send, peer)
        finally:
            self.state.admission.request_finished(peer)

    async def _serve(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                     send: Callable[[dict[str, Any]], Awaitable[None]], peer: Peer | None) -> None:
        started = False
        endpoint = "other"

        async def counted(message: dict[str, Any]) -> None:
            """Send within the write deadline; count the answer by endpoint and status."""
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.state.metrics.count_request(endpoint, message["status"])
            try:
                async with asyncio.timeout(self.state.client_timeout_s):
                    await send(message)
            except TimeoutError:
                self.state.admission.abort(peer, "write_timeout")
                raise ClientGone(f"the client took nothing of its answer for {self.state.client_timeout_s}s") from None

        try:
            endpoint = await self._admit(scope, peer)
            if scope["method"] == "POST":
                raw = await self._read_body(scope, receive, peer)
                scope["state"]["body_read"] = True
                scope["state"]["body"] = json_object(raw)
            await self.app(scope, receive, counted)
        except ClientGone as e:
            log.info("%s %s: client gone (%s)", scope["method"], scope["state"].get("endpoint", endpoint), e)
            if not started:
                self.state.metrics.count_request(scope["state"].get("endpoint", endpoint), CLIENT_GONE_STATUS)
            await asyncio.sleep(0)  # the aborted connection's loss is delivered before the request ends
        except Exception as e:  # noqa: BLE001 - every failure becomes an answer, logged when it is ours
            if started:
                raise
            endpoint = scope["state"].get("endpoint", endpoint)  # a 401/405 on a known route counts there
            await self._answer_error(e, scope, receive, counted, peer)

    async def _admit(self, scope: dict[str, Any], peer: Peer | None) -> str:
        """Headers, route, key, connection slot and rate: the endpoint's name, or an exception to answer."""
        headers = request_headers(scope["headers"])
        scope["state"]["headers"] = headers
        size = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if size > MAX_HEADER_BYTES:  # h11 bounds a head that arrives in pieces; this, one read at once
            raise _closing(RequestError(431, f"request headers: {size} bytes, more than {MAX_HEADER_BYTES}"))
        endpoint, access = self._route(scope)
        authorization = headers.get("authorization")
        client = self._authorize(access, authorization, scope, endpoint)
        scope["state"]["client"] = client
        if self._keyed(access, authorization):
            if not self.state.admission.admit(peer):
                raise _closing(RequestError(503, f"server busy: all {self.state.admission.limits.max_connections} "
                                                 "connections (max_connections) hold a request; retry later",
                                            retry_after_s=RETRY_AFTER_S))
        else:
            self._keyless_rate(peer)
        if access == "client" and self.state.rate_limiter is not None:
            wait = self.state.rate_limiter.wait_s(client)
            if wait > 0:
                raise RequestError(429, f"rate limit: {self.state.rate_limit_per_s} requests/s for client "
                                        f"{client!r}", retry_after_s=max(1, math.ceil(wait)))
        return endpoint

    async def _answer_error(self, e: Exception, scope: dict[str, Any], receive: Any, send: Any,
                            peer: Peer | None) -> None:
        err = error_status(e)
        if err.status >= 500 and not isinstance(e, RequestError):
            log.exception("%s %s failed", scope["method"], scope["state"].get("endpoint", "other"))
        close = getattr(e, "close", False)
        if scope["method"] == "POST" and not scope["state"].get("body_read"):
            length = scope["state"].get("headers", {}).get("content-length", "")
            close = close or not length.isdigit() or int(length) > DRAIN_BYTES
            conn = self.state.admission.connection(peer)
            if close and conn is not None:
                conn.body_unread = True
        await error_response(err, getattr(e, "headers", None), close=close)(scope, receive, send)

    def _route(self, scope: dict[str, Any]) -> tuple[str, Access]:
        """(endpoint name, access) of a known path and method; else 404/405 (after the key check)."""
        path = scope["path"].rstrip("/") or "/"
        # A session id may hold an encoded '/' (ids are the client's text): match the raw path.
        raw = scope.get("raw_path", b"").decode("latin-1").rstrip("/")
        session = SESSION_END.fullmatch(raw)
        if session:
            scope["state"]["session_id"] = _session_id(session.group(1))
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
        if access == "public" or not s.keys_required:
            return LOCAL_CLIENT
        keys = s.admin_keys if access == "admin" else s.api_keys
        client = keys.client(authorization)
        if client is not None:
            return client
        self._keyless_rate(peer_of(scope))
        challenge = f'Bearer realm="{s.realm}"' + (', error="invalid_token"' if authorization else "")
        log.info("%s: %s %s refused: %s key", (scope.get("client") or ("?",))[0], scope["method"], endpoint,
                 "wrong" if authorization else "no")
        what = "an admin key" if access == "admin" and s.admin_keys is not s.api_keys else "a client key"
        raise _with_headers(RequestError(401, f"missing or invalid API key; send `Authorization: Bearer <key>` "
                                              f"with {what}"), {"WWW-Authenticate": challenge})

    def _keyed(self, access: Access, authorization: str | None) -> bool:
        """Whether the request holds a valid key (every request does on a server without keys)."""
        s = self.state
        if not s.keys_required or access != "public":
            return True  # _authorize has checked it
        return s.api_keys.client(authorization) is not None or s.admin_keys.client(authorization) is not None

    def _keyless_rate(self, peer: Peer | None) -> None:
        wait = self.state.admission.keyless_wait_s(peer)
        if wait > 0:
            rate = self.state.admission.limits.keyless_rate_per_s
            raise _closing(RequestError(429, f"rate limit: {rate} requests/s from one address without a valid key",
                                        retry_after_s=max(1, math.ceil(wait))))

    async def _read_body(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                         peer: Peer | None) -> bytes:
        """The whole body, bounded in size and in time: 400/413/408 (closing) otherwise."""
        headers = scope["state"]["headers"]
        if "transfer-encoding" in headers:
            raise _closing(RequestError(400, "Transfer-Encoding: chunked bodies are not supported; send a "
                                             "Content-Length"))
        if "content-length" not in headers:
            raise _closing(RequestError(400, "Content-Length: required on POST"))
        length = int(headers["content-length"])  # h11 has checked it is one non-negative integer
        limit = self.state.max_body_bytes
        if length > limit:
            raise _closing(RequestError(413, f"request body of {length} bytes exceeds {limit}"))
        conn = self.state.admission.connection(peer)
        shut = asyncio.Event()
        if conn is not None:
            conn.reading_body = shut
        try:
            return await self._receive_all(receive, length, shut)
        finally:
            if conn is not None:
                conn.reading_body = None

    async def _receive_all(self, receive: Callable[[], Awaitable[dict[str, Any]]], length: int,
                           shut: asyncio.Event) -> bytes:
        chunks: list[bytes] = []
        got, more = 0, length > 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.state.client_timeout_s
        while more:
            message, shut_wait = asyncio.ensure_future(receive()), asyncio.ensure_future(shut.wait())
            try:
                await asyncio.wait({message, shut_wait}, timeout=max(0.0, deadline - loop.time()),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                shut_wait.cancel()
                arrived = message.done()
                if not arrived:  # the deadline, the client's EOF, or this request cancelled
                    message.cancel()
            if not arrived:
                if shut.is_set():
                    raise _closing(RequestError(400, f"body: {got} bytes received, Content-Length said {length}"))
                raise _closing(RequestError(408, f"body: not received within {self.state.client_timeout_s}s"))
            if message.result()["type"] == "http.disconnect":
                raise ClientGone("the client went away while sending its body")
            chunks.append(message.result().get("body", b""))
            got += len(chunks[-1])
            more = message.result().get("more_body", False)
        return b"".join(chunks)


def _session_id(encoded: str) -> str:
    """A session id from the raw path: percent-decoded as UTF-8, refused (400) if it is not."""
    try:
        return unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        raise RequestError(400, "session_id: not valid UTF-8 once percent-decoded", param="session_id") from None


def _with_headers(e: RequestError, headers: dict[str, str]) -> RequestError:
    e.headers = headers  # type: ignore[attr-defined]
    return e


def _closing(e: RequestError) -> RequestError:
    e.close = True  # type: ignore[attr-defined]
    return e
