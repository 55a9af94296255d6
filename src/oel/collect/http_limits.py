"""HTTP plumbing with bounds: a connection-limited threading server, Content-Length, errors.

`ThreadingHTTPServer` starts one thread per connection, with no limit: a flood of
connections is a flood of threads (and of their stacks and buffers). `BoundedHTTPServer`
gives each connection one of `max_connections` slots; a connection over the limit is
answered `503` with `Retry-After` by one of `REJECT_THREADS` short-lived threads (that read
its request first, so the client gets the answer instead of a reset), and beyond those it
is closed unanswered. Every number of threads is therefore bounded.

A response to a request whose body was not read ends the connection, after a bounded
"lingering close" (shut our side, discard what the client still sends for up to
`LINGER_S`): closing a socket with unread bytes makes the kernel send a reset, which can
destroy the error response before the client reads it.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from email.message import Message as HeaderMap
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
"""What an overloaded server tells clients to wait before retrying (the Retry-After header)."""
REJECT_THREADS = 16
"""Connections over the limit answered 503 at once; beyond this many at a time they are closed."""
REJECT_READ_TIMEOUT_S = 2.0
"""How long an over-limit connection may take to send its request before it is closed."""
REJECT_DRAIN_BYTES = 64 << 10
"""The most body bytes read (and discarded) from an over-limit request before answering it."""
LINGER_S = 2.0
LINGER_BYTES = 1 << 20
"""Bounds of a lingering close: how long and how much unread body is discarded."""
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")
"""At most 19 digits: any length that fits in 63 bits, and no int() of a huge string."""
_RECV_BYTES = 1 << 16
_SHOWN_CHARS = 40
"""A client's bad value is echoed in error messages cut to this many characters."""


class RequestError(Exception):
    """A client error: becomes an OpenAI-style error body with this HTTP status.

    `param` names the offending request field (OpenAI's `error.param`); `retry_after_s`
    adds a Retry-After header (overload answers).
    """

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.retry_after_s = retry_after_s


def show(value: Any) -> str:
    """repr(value), cut: error messages name the bad value without echoing a whole body."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape: {"error": {message, type, param, code}}."""
    kind = {401: "authentication_error"}.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def send_json(handler: BaseHTTPRequestHandler, status: int, obj: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
    """Write one JSON response; `Connection: close` when the handler will close."""
    data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    if handler.close_connection:
        handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(data)


def content_length(headers: HeaderMap, max_bytes: int) -> int:
    """The declared body size of a POST: 400 when missing, malformed or ambiguous; 413 when too big.

    Chunked bodies are refused (and a Transfer-Encoding next to a Content-Length is the
    classic request-smuggling shape), as are several differing Content-Length headers.
    """
    if headers.get("Transfer-Encoding") is not None:
        raise RequestError(400, "Transfer-Encoding: chunked bodies are not supported; send a Content-Length")
    values = {v.strip() for v in headers.get_all("Content-Length") or []}
    if not values:
        raise RequestError(400, "Content-Length: required on POST")
    if len(values) > 1:
        raise RequestError(400, "Content-Length: given more than once with different values")
    raw = values.pop()
    if not _CONTENT_LENGTH.fullmatch(raw):
        raise RequestError(400, f"Content-Length: expected a non-negative integer, got {show(raw)}")
    length = int(raw)
    if length > max_bytes:
        raise RequestError(413, f"request body of {length} bytes exceeds {max_bytes}")
    return length


def may_have_body(method: str, headers: HeaderMap) -> bool:
    """Whether bytes of a body may follow the headers: a non-zero Content-Length, any
    Transfer-Encoding, or a POST without Content-Length (a broken client may send one anyway)."""
    lengths = headers.get_all("Content-Length") or []
    if headers.get("Transfer-Encoding") is not None or (method == "POST" and not lengths):
        return True
    return any(v.strip() != "0" for v in lengths)


def linger_close(sock: socket.socket, *, seconds: float = LINGER_S, max_bytes: int = LINGER_BYTES) -> None:
    """Shut our sending side, then discard what the client still sends (bounded), before close."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(seconds)
        discarded = 0
        while discarded < max_bytes:
            chunk = sock.recv(min(max_bytes - discarded, _RECV_BYTES))
            if not chunk:
                return
            discarded += len(chunk)
    except OSError:  # timeout, reset: the client is gone or slow; we close anyway
        return


class OverLimitHandler(BaseHTTPRequestHandler):
    """Answers any request 503 + Retry-After and closes: the server has no free connection slot."""

    protocol_version = "HTTP/1.1"
    timeout = REJECT_READ_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("over limit: %s " + format, self.client_address[0], *args)

    def _reject(self) -> None:
        self.close_connection = True
        send_json(self, 503, error_body(503, "server busy: too many open connections; retry later"),
                  {"Retry-After": str(RETRY_AFTER_S)})
        linger_close(self.connection, max_bytes=REJECT_DRAIN_BYTES)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _reject


class BoundedHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with at most `max_connections` connections served at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *,
                 max_connections: int, over_limit_handler: type[BaseHTTPRequestHandler] = OverLimitHandler) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        # socketserver's listen backlog of 5 drops the SYNs of a burst of clients (each then waits a
        # 1 s retransmit, or is reset): let the kernel hold as many as can be served or refused.
        self.request_queue_size = min(max_connections + REJECT_THREADS, socket.SOMAXCONN)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._reject_slots = threading.BoundedSemaphore(REJECT_THREADS)
        self.over_limit_handler = over_limit_handler
        self.max_connections = max_connections
        self._count_lock = threading.Lock()
        self.open_connections = 0
        """Connections being served now (over-limit ones not counted)."""
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Called by the accept loop: hand the connection to a thread if a slot is free."""
        if self._slots.acquire(blocking=False):
            handler, slots = self.RequestHandlerClass, self._slots
            self._count(+1)
        elif self._reject_slots.acquire(blocking=False):
            handler, slots = self.over_limit_handler, self._reject_slots
        else:
            log.warning("%s: connection closed unanswered: %d connections open and %d being refused",
                        client_address[0], self.max_connections, REJECT_THREADS)
            self.shutdown_request(request)
            return
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address, handler, slots),
                                  name="oel-http-conn", daemon=True)
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any, handler: type[BaseHTTPRequestHandler],
                          slots: threading.BoundedSemaphore) -> None:
        try:
            handler(request, client_address, self)
        except OSError as e:  # the client went away mid-request: nothing to answer
            log.debug("%s: connection ended: %s", client_address[0], e)
        except Exception:  # noqa: BLE001 - socketserver's own policy: log, close, carry on
            log.exception("%s: connection handler failed", client_address[0])
        finally:
            self.shutdown_request(request)
            if slots is self._slots:
                self._count(-1)
            slots.release()

    def _count(self, change: int) -> None:
        with self._count_lock:
            self.open_connections += change


def json_object(data: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object; anything else is a 400 naming `body`."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, 4300+ digit integers, deep nesting
        raise RequestError(400, f"body: not valid JSON ({getattr(e, 'msg', type(e).__name__)})") from None
    if not isinstance(body, dict):
        raise RequestError(400, "body: must be a JSON object")
    return body


class JsonRequestHandler(BaseHTTPRequestHandler):
    """What `oel serve`'s and the gateway's handlers share: HTTP/1.1 keep-alive, a bounded JSON
    body read once, OpenAI-style error bodies, and answers that close (after a lingering drain)
    a connection whose body was left unread, since its bytes would parse as the next request.

    Subclasses set `max_body_bytes` and `timeout` (the socket timeout: idle and slow clients
    lose their slot) and may override `on_status` to count answers.
    """

    protocol_version = "HTTP/1.1"
    max_body_bytes = 1 << 20
    _body_read = False

    def log_message(self, format: str, *args: Any) -> None:  # route access logs to logging
        log.debug("%s " + format, self.client_address[0], *args)

    def parse_request(self) -> bool:
        self._body_read = False
        return super().parse_request()

    def on_status(self, status: int) -> None:
        """Called with the status of every answer (a hook for metrics)."""

    def _read_json(self) -> dict[str, Any]:
        length = content_length(self.headers, self.max_body_bytes)
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            raise RequestError(408, f"body: not received within {self.timeout}s") from None
        if len(data) < length:
            raise RequestError(400, f"body: {len(data)} bytes received, Content-Length said {length}")
        self._body_read = True
        return json_object(data)

    def _error(self, e: RequestError, headers: dict[str, str] | None = None) -> None:
        if e.retry_after_s is not None:
            headers = {**(headers or {}), "Retry-After": str(e.retry_after_s)}
        self._reply(e.status, error_body(e.status, str(e), e.param), headers)

    def _reply(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        unread = not self._body_read and may_have_body(self.command, self.headers)
        self.close_connection = self.close_connection or unread
        self.on_status(status)
        send_json(self, status, obj, headers)
        if unread:
            linger_close(self.connection)
