"""The gateway's HTTP handler: routes, keys, limits, and the answer shapes (OpenAI's where one exists).

Every chat exchange is recorded in the store before its answer is written, streaming included:
the in-process model generates the whole answer first and it is then sent as server-sent events
in OpenAI's `chat.completion.chunk` format (pieces of `STREAM_PIECE_CHARS` characters), ending
with `data: [DONE]`. An agent framework that streams by default thus works unchanged; it only
does not see tokens before the answer is complete.

Status codes: 400 a bad field (the message and `error.param` name it), 401 no/wrong key,
404 unknown path or session, 405 wrong method, 409 conflict (an idempotency key reused with
another body, an ended session), 413 body too big, 429 rate limit (Retry-After), 503 store busy
or queue full (Retry-After), 502 upstream failure.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from oel.collect.auth import ApiKeys
from oel.collect.chat_request import bad, bool_field, parse_chat_request
from oel.collect.http_limits import (
    RETRY_AFTER_S,
    BoundedHTTPServer,
    JsonRequestHandler,
    RequestError,
    show,
)
from oel.errors import DataError
from oel.online.errors import ConflictError, NotFoundError
from oel.online.intake import AUTO_SESSION_PREFIX
from oel.online.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from oel.online.metrics import GatewayMetrics
from oel.online.responders import Answer, Responder
from oel.online.sessions import parse_messages as check_prompt
from oel.online.store import MAX_NAME_CHARS, Store


class HandlerLimits(Protocol):
    """The settings the handler reads (oel.online.gateway.GatewayConfig has them all)."""

    client_timeout_s: float
    max_body_bytes: int
    served_name: str
    rate_limit_per_s: float
    max_tokens_limit: int


class RateLimit(Protocol):
    def wait_s(self, client: str) -> float: ...


class GatewayState(Protocol):
    """What the handler needs of the gateway (oel.online.gateway.Gateway). A protocol, so that the
    gateway can build its handler from this module without the two importing each other."""

    config: HandlerLimits
    api_keys: ApiKeys
    admin_keys: ApiKeys
    httpd: BoundedHTTPServer
    metrics: GatewayMetrics
    rate_limiter: RateLimit
    responder: Responder | None
    store: Store

    @property
    def version(self) -> int: ...

log = logging.getLogger(__name__)

SESSION_HEADER = "X-OEL-Session"
VERSION_HEADER = "X-OEL-Model-Version"
IDEMPOTENCY_HEADER = "Idempotency-Key"
STREAM_PIECE_CHARS = 16
"""Characters per streamed content chunk (the answer is complete before streaming starts)."""
LOCAL_CLIENT = "local"
"""The client name recorded when no key is configured (loopback-only gateways)."""
ROUTES = {"/healthz": "GET", "/metrics": "GET", "/v1/models": "GET", "/v1/chat/completions": "POST",
          "/v1/trajectories": "POST"}
_SESSION_END = re.compile(r"/v1/sessions/([^/]+)/end")
_END_FIELDS = frozenset({"outcome", "passed", "env_id"})


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


def parse_chat(body: dict[str, Any], max_tokens_limit: int) -> tuple[Any, Any, bool, bool]:
    """(messages, params, stream, include_usage); stream fields are ours, the rest is oel serve's validation."""
    stream = bool_field(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options", f"expected an object, got {show(options)}")
    include_usage = bool_field(options or {}, "include_usage")
    messages, params = parse_chat_request({k: v for k, v in body.items() if k not in ("stream", "stream_options")},
                                          max_tokens_limit)
    try:
        check_prompt(messages)
    except ValueError as e:
        raise RequestError(400, str(e), param="messages") from None
    return messages, params, stream, include_usage


def completion_body(answer: Answer, model: str, cid: str) -> dict[str, Any]:
    gen = answer.generation
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                         "finish_reason": gen.finish_reason}],
            "usage": _usage(answer)}


def _usage(answer: Answer) -> dict[str, int]:
    gen = answer.generation
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens}


def stream_events(answer: Answer, model: str, cid: str, include_usage: bool) -> list[dict[str, Any]]:
    """The answer as OpenAI chunks: role, content pieces, finish_reason, then usage when asked."""
    created = int(time.time())
    text = answer.generation.text

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": text[i:i + STREAM_PIECE_CHARS]}) for i in range(0, len(text), STREAM_PIECE_CHARS)]
    events.append(chunk({}, answer.generation.finish_reason))
    if include_usage:
        events.append({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [], "usage": _usage(answer)})
    return events


def make_handler(gw: GatewayState) -> type[BaseHTTPRequestHandler]:
    config = gw.config

    class Handler(JsonRequestHandler):
        timeout = config.client_timeout_s
        max_body_bytes = config.max_body_bytes
        _endpoint = "other"

        def parse_request(self) -> bool:
            self._endpoint = "other"
            return super().parse_request()

        def on_status(self, status: int) -> None:
            gw.metrics.count_request(self._endpoint, status)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _other_method(self) -> None:
            self._serve(self.command)

        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_method

        # ---- routing ----------------------------------------------------------------------

        def _serve(self, method: str) -> None:
            path = urlsplit(self.path).path.rstrip("/") or "/"
            session = _SESSION_END.fullmatch(path)
            route = "/v1/sessions/{id}/end" if session else path
            allowed = "POST" if session else ROUTES.get(path)
            if allowed is None:
                return self._error(RequestError(404, f"{path}: not found (see GET /v1/models, POST "
                                                     "/v1/chat/completions, /v1/trajectories, /v1/sessions/{id}/end)"))
            self._endpoint = route
            if method != allowed:
                return self._error(RequestError(405, f"{path}: use {allowed}"), {"Allow": allowed})
            try:
                self._dispatch(route, session)
            except Exception as e:
                err = error_status(e)
                if err.status >= 500 and not isinstance(e, RequestError):
                    log.exception("%s %s failed", method, path)
                self._error(err)

        def _dispatch(self, route: str, session: re.Match[str] | None) -> None:
            if route == "/healthz":
                return self._reply(200, {"status": "ok", "model_version": gw.version})
            if route == "/metrics":
                return self._metrics() if self._admin() else None
            client = self._client()
            if client is None:
                return None
            self._rate_limit(client)
            if route == "/v1/models":
                return self._reply(200, {"object": "list", "data": [
                    {"id": config.served_name, "object": "model", "created": 0, "owned_by": "oel",
                     "oel_model_version": gw.version}]}, self._version_header())
            if route == "/v1/chat/completions":
                return self._chat(client)
            if route == "/v1/trajectories":
                return self._trajectory(client)
            return self._end_session(client, unquote(session.group(1)) if session else "")

        # ---- keys and limits ----------------------------------------------------------------

        def _client(self) -> str | None:
            """The calling client's name; None after a 401. No keys at all: the loopback-only `local`."""
            if not gw.api_keys:
                return LOCAL_CLIENT
            client = gw.api_keys.client(self.headers.get("Authorization"))
            if client is None:
                self._unauthorized()
            return client

        def _admin(self) -> bool:
            """An admin key was sent (or no key of any kind is configured: a loopback-only gateway)."""
            if not gw.admin_keys and not gw.api_keys:
                return True
            if gw.admin_keys.check(self.headers.get("Authorization")):
                return True
            self._unauthorized("an admin key")
            return False

        def _unauthorized(self, what: str = "a client key") -> None:
            header = self.headers.get("Authorization")
            challenge = 'Bearer realm="oel gateway"' + (', error="invalid_token"' if header else "")
            log.info("%s: %s %s refused: %s key", self.client_address[0], self.command, self._endpoint,
                     "wrong" if header else "no")
            self._error(RequestError(401, f"missing or invalid API key; send `Authorization: Bearer <key>` with {what}"),
                        {"WWW-Authenticate": challenge})

        def _rate_limit(self, client: str) -> None:
            wait = gw.rate_limiter.wait_s(client)
            if wait > 0:
                raise RequestError(429, f"rate limit: {config.rate_limit_per_s} requests/s for client {client!r}",
                                   retry_after_s=max(1, math.ceil(wait)))

        def _version_header(self) -> dict[str, str]:
            return {VERSION_HEADER: str(gw.version)}

        # ---- endpoints ----------------------------------------------------------------------

        def _chat(self, client: str) -> None:
            body = self._read_json()
            messages, params, stream, include_usage = parse_chat(body, config.max_tokens_limit)
            session_id = session_header(self.headers.get(SESSION_HEADER))
            if gw.responder is None:
                raise RequestError(404, "chat: this gateway takes trajectories only (responder=none)")
            answer = gw.responder.complete(messages, params, body)
            recorded = gw.store.record_exchange(  # durable before acknowledged
                client, messages, answer.generation.text, session_id=session_id,
                model_id=f"{config.served_name}@v{answer.version}", prompt_tokens=answer.generation.prompt_tokens,
                response_tokens=answer.generation.completion_tokens)
            headers = {SESSION_HEADER: recorded.session_id, VERSION_HEADER: str(answer.version)}
            cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            if stream:
                return self._stream(stream_events(answer, config.served_name, cid, include_usage), headers)
            self._reply(200, completion_body(answer, config.served_name, cid), headers)

        def _trajectory(self, client: str) -> None:
            body = self._read_json()
            key = self.headers.get(IDEMPOTENCY_HEADER)
            added = gw.store.add_trajectory(client, body, idempotency_key=key)
            self._reply(200 if added.duplicate else 201, {"id": added.trajectory_id, "duplicate": added.duplicate})

        def _end_session(self, client: str, session_id: str) -> None:
            body = self._read_json()
            extra = sorted(set(body) - _END_FIELDS)
            if extra:
                raise bad(extra[0], f"unknown field (a session end has {', '.join(sorted(_END_FIELDS))})")
            if not isinstance(body.get("outcome"), str):
                raise bad("outcome", f"expected a string, got {show(body.get('outcome'))}")
            kwargs = {"env_id": body["env_id"]} if body.get("env_id") is not None else {}
            added = gw.store.end_session(client, session_id, body["outcome"], body.get("passed"), **kwargs)
            self._reply(200 if added.duplicate else 201, {"id": added.trajectory_id, "duplicate": added.duplicate})

        def _metrics(self) -> None:
            depth = gw.responder.queue_depth() if gw.responder is not None else 0
            text = gw.metrics.render(gw.store.stats(), queue_depth=depth, open_connections=gw.httpd.open_connections,
                                     model_version=gw.version).encode("utf-8")
            self.on_status(200)
            self.send_response(200)
            self.send_header("Content-Type", METRICS_CONTENT_TYPE)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        # ---- bodies and answers -------------------------------------------------------------

        def _stream(self, events: list[dict[str, Any]], headers: dict[str, str]) -> None:
            """Server-sent events in chunked transfer encoding, so the connection stays reusable."""
            self.on_status(200)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            for data in [json.dumps(e, ensure_ascii=False) for e in events] + ["[DONE]"]:
                payload = f"data: {data}\n\n".encode()
                self.wfile.write(f"{len(payload):x}\r\n".encode("ascii") + payload + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler
