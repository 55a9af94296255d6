"""The HTTP server under every mode: uvicorn (h11) on an asyncio loop in a thread of its own.

Idle and slow connections cost no thread: one event loop serves them all. uvicorn itself
bounds idle keep-alive, but not a client that sends its request slowly (a slowloris: a header
byte a second keeps the connection open for ever), and it counts every connection alike. The
protocol here adds, per connection:

- a request deadline: from the moment the connection opens, or its previous answer ends, the
  next request's headers must be complete within `client_timeout_s`, else the connection is
  closed (the body has its own deadline, enforced by oel.serving.app: 408);
- a bound on what is discarded of an unread body after an answer (uvicorn drains it to keep
  the connection) and a lingering close: an answer that closes a connection whose body was not
  read shuts our side first and discards what still arrives, briefly, so that the kernel does
  not reset the connection and destroy the answer before the client reads it;
- `max_connections` open at once. A new connection over the limit closes the OLDEST connection
  that has waited at least EVICT_GRACE_S without sending a complete request (a connection that
  never authenticates cannot hold a slot against one that does); only when no slot can be
  freed so is the new one answered 503 + Retry-After (after its request head arrives);
- OpenAI-shaped JSON errors for requests h11 cannot parse (bad Content-Length, ...).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from oel.serving.protocol import RETRY_AFTER_S, error_body

log = logging.getLogger(__name__)

LINGER_S = 2.0
LINGER_BYTES = 64 << 20
"""Bounds of a lingering close: how long and how much unread body is discarded. A client writes its
whole body before it reads the answer (http.client, requests, curl): closing before its last byte
arrived resets the connection and destroys the answer (a 413 for a 5 MiB body became a broken
pipe). Discarding costs the loop ~1 ms per MiB on loopback; the time bound holds a slow client."""
DRAIN_BYTES = 1 << 20
"""The most bytes of an unread body parsed and discarded to keep a connection alive after its
answer (401, 404, ...); beyond, the connection is closed with a lingering close."""
EVICT_GRACE_S = 0.5
"""A connection is evicted only after waiting this long for its request: one that has just opened
(its client about to send) is not reset by a burst of others."""
REJECT_READ_TIMEOUT_S = 2.0
"""How long a connection over the limit may take to send its request head before it is closed unanswered."""
REJECT_HEAD_BYTES = 64 << 10
START_TIMEOUT_S = 30.0


class ConnectionGuard:
    """One server's open connections (oldest first) and its limits; used on the loop thread only."""

    def __init__(self, max_connections: int, client_timeout_s: float,
                 on_close: Callable[[str], None] = lambda reason: None) -> None:
        self.max_connections = max_connections
        self.client_timeout_s = client_timeout_s
        self.on_close = on_close
        self.open: dict[GuardedH11Protocol, None] = {}

    def admit(self, conn: GuardedH11Protocol) -> bool:
        """Give `conn` a slot, evicting the oldest connection without a request if none is free."""
        if len(self.open) >= self.max_connections:
            now = time.monotonic()
            waiting = next((c for c in self.open if c.awaiting_request() and now - c.waiting_since >= EVICT_GRACE_S),
                           None)
            if waiting is None:
                return False
            self.open.pop(waiting)
            waiting.close_now("evicted")
        self.open[conn] = None
        return True

    def release(self, conn: GuardedH11Protocol) -> None:
        self.open.pop(conn, None)


class _LingeringTransport:
    """The connection's transport, whose close() lingers when the request body was left unread."""

    def __init__(self, transport: asyncio.Transport, conn: GuardedH11Protocol) -> None:
        self._transport, self._conn = transport, conn
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.lingering or self._transport.is_closing():
            return
        if self._conn.conn.their_state is not h11.SEND_BODY or not self._transport.can_write_eof():
            self._transport.close()
            return
        self.linger()

    def linger(self) -> None:
        """Shut our side, discard what still arrives (bounded, see data_received), close after LINGER_S."""
        self.lingering = True
        self._transport.write_eof()
        self._transport.resume_reading()
        asyncio.get_running_loop().call_later(LINGER_S, self._transport.close)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the deadlines and limits of this module's docstring."""

    guard: ConnectionGuard  # set on the per-server subclass (`protocol_class`)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = False  # one line per request at INFO costs more than it tells; errors are logged
        self._deadline: asyncio.TimerHandle | None = None
        self._armed_for: object = None
        self._discarded = 0
        self._protocol_error = ""
        self._rejecting = False
        self.waiting_since = time.monotonic()
        self._head = b""
        next_event = self.conn.next_event

        def remember_error() -> Any:
            try:
                return next_event()
            except h11.RemoteProtocolError as e:
                self._protocol_error = str(e)
                raise

        self.conn.next_event = remember_error  # type: ignore[method-assign]

    # -- connection lifecycle -------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _LingeringTransport(transport, self)  # type: ignore[assignment]
        if not self.guard.admit(self):
            # Answered once its request head is in (answering before would race the client's send
            # into a reset that destroys the answer); a client that sends none is closed at the deadline.
            self._rejecting = True
            self._deadline = self.loop.call_later(REJECT_READ_TIMEOUT_S, self.close_now, "over_limit")
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.release(self)
        self._disarm()
        super().connection_lost(exc)

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """The client shut its sending side: mid-body, keep ours open to answer (400); else close."""
        if self.cycle is not None and not self.cycle.response_complete and self.conn.their_state is h11.SEND_BODY:
            self.cycle.scope["state"]["client_eof"] = True
            self.cycle.message_event.set()
            return True
        return None

    def data_received(self, data: bytes) -> None:
        if self._rejecting and not self.transport.is_closing():
            self._head += data
            if b"\r\n\r\n" in self._head or len(self._head) > REJECT_HEAD_BYTES:
                self._disarm()
                self.guard.on_close("over_limit")
                self._send_error(503, "server busy: too many open connections; retry later",
                                 [(b"retry-after", str(RETRY_AFTER_S).encode())], linger=True)
            return
        transport = self.transport if isinstance(self.transport, _LingeringTransport) else None
        if transport is not None and transport.lingering:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self.close_now("unread_body")
            return
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.SEND_BODY:
            self._discarded += len(data)  # an answered request's unread body: h11 skips it, within bounds
            if self._discarded > DRAIN_BYTES and transport is not None:
                self.guard.on_close("unread_body")
                transport.linger()
                return
        super().data_received(data)
        if self._deadline is not None and self.cycle is not None and self.cycle is not self._armed_for:
            self._disarm()  # a new request's headers are complete

    def on_response_complete(self) -> None:
        finished = self.cycle
        super().on_response_complete()
        if self.cycle is finished and not self.transport.is_closing():
            self._discarded = 0
            self._arm()

    def awaiting_request(self) -> bool:
        """No request in progress: idle, or its headers still arriving."""
        return self.cycle is None or self.cycle.response_complete

    def close_now(self, reason: str) -> None:
        """Close at once, without lingering (evicted, deadline passed, too much unread body)."""
        self.guard.on_close(reason)
        self._disarm()
        transport = self.transport
        (transport._transport if isinstance(transport, _LingeringTransport) else transport).close()

    # -- the request deadline -------------------------------------------------------------
    def _arm(self) -> None:
        self._disarm()
        self.waiting_since = time.monotonic()
        self._armed_for = self.cycle
        self._deadline = self.loop.call_later(self.guard.client_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.awaiting_request() and not self.transport.is_closing():
            log.debug("%s: no complete request within %ss; closed", self.client, self.guard.client_timeout_s)
            self.close_now("request_timeout")

    # -- errors h11 finds -------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot frame: an OpenAI error naming the header, and close."""
        detail = self._protocol_error or msg
        if "buffer too long" in detail.lower() or "too long" in detail.lower():
            self._send_error(431, f"request headers: larger than {self.conn._max_incomplete_event_size} bytes")
            return
        if "content-length" in detail.lower():
            message = f"Content-Length: malformed or conflicting ({detail})"
        elif "transfer-encoding" in detail.lower():
            message = f"Transfer-Encoding: {detail}"
        else:
            message = f"request: not valid HTTP/1.1 ({detail})"
        self._send_error(400, message)

    def _send_error(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None,
                    linger: bool = False) -> None:
        """Write a whole answer outside h11 (whose state may be ERROR, or never saw a request) and close."""
        body = json.dumps(error_body(status, message)).encode()
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"), *(headers or [])]
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()] + [k + b": " + v for k, v in head]
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        if linger and isinstance(self.transport, _LingeringTransport):
            self.transport.linger()
        else:
            self.transport.close()


def protocol_class(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """A protocol class bound to one server's guard (uvicorn builds one instance per connection)."""
    return type("OelH11Protocol", (GuardedH11Protocol,), {"guard": guard})


class HTTPServer:
    """An ASGI app served by uvicorn on a thread; the port is bound in the constructor."""

    def __init__(self, app: Any, host: str, port: int, guard: ConnectionGuard, *,
                 graceful_timeout_s: float) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.set_inheritable(True)
        self.guard = guard
        config = uvicorn.Config(app, http=protocol_class(guard), ws="none", lifespan="off", loop="asyncio",
                                interface="asgi3", log_config=None, access_log=False, server_header=False,
                                timeout_keep_alive=max(1, int(guard.client_timeout_s)),
                                timeout_graceful_shutdown=int(graceful_timeout_s), backlog=2048)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def server_address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    @property
    def open_connections(self) -> int:
        return len(self.guard.open)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        name="oel-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("HTTP server did not start (see the log)")
            time.sleep(0.005)

    def close(self) -> None:
        """Stop accepting, let requests in progress finish (up to the graceful timeout), free the port."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join()
        self.sock.close()

    @property
    def threads(self) -> list[threading.Thread]:
        return [self._thread] if self._thread is not None else []
