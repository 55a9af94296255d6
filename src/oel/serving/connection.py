"""One TCP connection's limits, around the HTTP protocol uvicorn runs on it.

Why at the connection and not in the ASGI app: these act where no request exists, before a
request head is complete and after an answer, where no ASGI app runs. uvicorn has no deadline
for a request head that arrives slowly (a header byte a second holds a connection for ever),
no admission by key, and its close after an answer with an unread body lets the kernel reset
the connection and destroy the answer. So `GuardedConnection` wraps the protocol object uvicorn
builds for each connection (uvicorn.Config(http=...) takes any factory of asyncio protocols) and
speaks to it only through asyncio's public Protocol and Transport interfaces; it reads or
overrides no uvicorn internals (tests/test_serving_admission.py runs against the newest uvicorn).

Per connection:
- admission (oel.serving.admission): keyless pool or keyed slot, eviction;
- the head deadline: from the connection opening, or its previous answer ending, the next
  request's head must be complete within `client_timeout_s`, else the connection is closed;
- a bounded kernel send buffer (SEND_BUFFER_BYTES), so that a client that stops reading is
  seen by the write deadline (oel.serving.edge) after kilobytes, not megabytes;
- a lingering close when the client may still be sending (an answer before its body was
  read, a framing error): our side is shut first and what still arrives is discarded, briefly,
  so that the client, which writes its whole body before reading, reads the answer;
- framing errors (bad Content-Length, ...) answered as OpenAI-shaped JSON naming the header
  instead of uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from http import HTTPStatus
from typing import Any

import h11

from oel.serving.admission import Admission
from oel.serving.protocol import error_body

log = logging.getLogger(__name__)

LINGER_S = 2.0
LINGER_BYTES = 64 << 20
"""Bounds of a lingering close: how long and how much unread body is discarded. Closing before a
client's last byte arrived resets the connection and destroys the answer (a 413 for a 5 MiB body
became a broken pipe). Discarding costs the loop ~1 ms per MiB on loopback."""
MAX_HEAD_BYTES = 16 << 10
"""The most bytes a request head may take (h11's bound on an incomplete head; 431 beyond)."""
SEND_BUFFER_BYTES = 64 << 10
"""The kernel's send buffer per connection (Linux doubles it). Left to autotuning it grows to 4 MiB
(tcp_wmem) for a client that stopped reading: 4 MiB of memory held per such connection, and a
write deadline blind to the stall for megabytes. A token stream or a JSON answer needs far less."""
UVICORN_ERROR_PREFIX = b"HTTP/1.1 400 "
"""The protocol writes outside any request only to refuse bytes it cannot parse (a 400)."""


class GuardedConnection(asyncio.Protocol):
    """uvicorn's protocol for one connection, with the limits of the module doc around it."""

    def __init__(self, inner: Any, admission: Admission) -> None:
        self.inner = inner
        self.admission = admission
        self.peer: tuple[str, int] = ("", 0)
        self.opened_at = time.monotonic()
        self.in_flight = 0
        self.body_unread = False
        """The answer went (or goes) out before the request's body was read: close by lingering."""
        self.reading_body: asyncio.Event | None = None
        """Set by the edge while it reads a body; set when the client shuts its side mid-body."""
        self._deadline: asyncio.TimerHandle | None = None
        self._head = bytearray()
        self.transport: LingeringTransport | None = None

    # ---- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        peer = transport.get_extra_info("peername")
        known = isinstance(peer, (tuple, list)) and len(peer) >= 2
        self.peer = (str(peer[0]), int(peer[1])) if known else ("", id(self))
        self.transport = LingeringTransport(transport, self)
        self.inner.connection_made(self.transport)
        self.admission.opened(self)
        if not transport.is_closing():
            self.became_idle()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.transport.lingering:
            self.transport.discard(len(data))
            return
        if self.in_flight == 0 and len(self._head) <= MAX_HEAD_BYTES:
            self._head += data[:MAX_HEAD_BYTES + 1 - len(self._head)]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        """The client shut its sending side: mid-body, ours stays open for the answer (400); else
        it has gone (a closed connection looks the same), and the connection closes."""
        if self.reading_body is not None:
            self.reading_body.set()
            return True
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.admission.closed(self)
        self._cancel_deadline()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # ---- what admission and the edge call -----------------------------------------------
    def began_request(self) -> None:
        self._cancel_deadline()
        self._head.clear()
        self.body_unread = False

    def became_idle(self) -> None:
        self._cancel_deadline()
        self._deadline = asyncio.get_running_loop().call_later(self.admission.limits.client_timeout_s, self._expired)

    def close_now(self, reason: str) -> None:
        """Close at once, dropping anything unsent (evicted, deadline passed, a reader that stopped reading)."""
        self.admission.on_close(reason)
        self._cancel_deadline()
        if self.transport is not None:
            self.transport.abort_now()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.in_flight == 0 and self.transport is not None and not self.transport.is_closing():
            log.debug("%s: no complete request within %ss; closed", self.peer, self.admission.limits.client_timeout_s)
            self.close_now("request_timeout")

    def framing_error_answer(self) -> bytes:
        """The JSON answer to the head the protocol refused, naming what was wrong."""
        status, message = describe_framing_error(bytes(self._head))
        body = json.dumps(error_body(status, message)).encode()
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
                f"content-length: {len(body)}", "connection: close"]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def describe_framing_error(head: bytes) -> tuple[int, str]:
    """(status, message) for bytes h11 refuses, found by parsing them again with h11 itself."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    try:
        parser.receive_data(head)
        while parser.next_event() not in (h11.NEED_DATA, h11.PAUSED):
            pass
    except h11.RemoteProtocolError as e:
        detail = str(e)
        if e.error_status_hint == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE:
            return e.error_status_hint, f"request headers: larger than {MAX_HEAD_BYTES} bytes"
        if "content-length" in detail.lower():
            return 400, f"Content-Length: malformed or conflicting ({detail})"
        if "transfer-encoding" in detail.lower():
            return 400, f"Transfer-Encoding: {detail}"
        return 400, f"request: not valid HTTP/1.1 ({detail})"
    return 400, "request: not valid HTTP/1.1"


class LingeringTransport:
    """The transport the protocol writes to: its close() lingers when the client may still be
    sending, and a protocol-error answer written outside any request is replaced by JSON."""

    def __init__(self, transport: asyncio.Transport, conn: GuardedConnection) -> None:
        self._transport, self._conn = transport, conn
        self.lingering = False
        self._discarded = 0
        self._replaced_error = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._replaced_error:
            return
        if self._conn.in_flight == 0 and bytes(data[:len(UVICORN_ERROR_PREFIX)]) == UVICORN_ERROR_PREFIX:
            self._replaced_error = True
            self._conn.body_unread = True  # its body, if any, is unread
            self._transport.write(self._conn.framing_error_answer())
            return
        self._transport.write(data)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        if self._conn.body_unread and self._transport.can_write_eof():
            self.linger()
        else:
            self._transport.close()

    def linger(self) -> None:
        """Shut our side, discard what still arrives (bounded), close after LINGER_S or at the client's EOF."""
        self.lingering = True
        self._conn.admission.closed(self._conn)  # it serves nothing more: its slot is free now
        self._transport.write_eof()
        self._transport.resume_reading()
        asyncio.get_running_loop().call_later(LINGER_S, self._transport.close)

    def discard(self, n: int) -> None:
        self._discarded += n
        if self._discarded > LINGER_BYTES:
            self._conn.close_now("unread_body")

    def abort_now(self) -> None:
        self.lingering = False
        self._transport.abort()
