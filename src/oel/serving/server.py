"""The HTTP server under every mode: uvicorn (h11) on an asyncio loop in a thread of its own.

Idle and slow connections cost no thread: one event loop serves them all. Each connection's
protocol is uvicorn's own h11 protocol inside oel.serving.connection.GuardedConnection
(deadlines, admission, lingering close), plugged in through uvicorn's `http=` setting, which
takes any protocol factory; uvicorn itself is used only through its public Config and Server.

The listening socket is created for TCP explicitly (protocol IPPROTO_TCP): asyncio sets
TCP_NODELAY only on sockets whose protocol says TCP, and without it Nagle's algorithm holds an
answer's body until the client acknowledges its head, which a client delays ~40 ms: every
request on a kept-alive connection then took 44 ms instead of well under one.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import threading
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from oel.serving.admission import Admission
from oel.serving.connection import MAX_HEAD_BYTES, GuardedConnection

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
BACKLOG = 2048
FD_RESERVE = 64
"""File descriptors kept for what is not a connection (the store, model files, logs)."""


def raise_fd_limit(connections: int) -> None:
    """Raise the soft open-files limit toward the hard one when the limits could exceed it: an
    accept() failing for lack of descriptors stops the server accepting anyone, keyed or not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = connections + FD_RESERVE
    if need <= soft:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        log.warning("open-files limit %d is below the %d connections the limits allow; lower "
                    "max_connections / max_keyless_connections or raise `ulimit -n`", target, connections)


class HTTPServer:
    """An ASGI app served by uvicorn on a thread; the port is bound in the constructor."""

    def __init__(self, app: Any, host: str, port: int, admission: Admission, *,
                 graceful_timeout_s: float) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.set_inheritable(True)
        self.admission = admission
        limits = admission.limits
        raise_fd_limit(limits.max_connections + limits.max_keyless_connections)

        def connection(**kwargs: Any) -> asyncio.Protocol:
            return GuardedConnection(H11Protocol(**kwargs), admission)

        config = uvicorn.Config(app, http=connection, ws="none", lifespan="off", loop="asyncio", interface="asgi3",
                                log_config=None, access_log=False, server_header=False,
                                h11_max_incomplete_event_size=MAX_HEAD_BYTES,
                                timeout_keep_alive=max(1, int(limits.client_timeout_s)),
                                timeout_graceful_shutdown=int(graceful_timeout_s), backlog=BACKLOG)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def server_address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    @property
    def open_connections(self) -> int:
        return self.admission.open

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
