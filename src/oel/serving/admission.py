"""Who may hold a connection: keyed clients in slots, everyone else in a bounded pool per address.

A connection's key is known only once its first request's headers are in, so every new
connection starts KEYLESS. Keyless connections never take one of the `max_connections` slots:
they live in a pool of their own, bounded per peer address (`max_keyless_per_ip`) and in all
(`max_keyless_connections`). Over either bound the OLDEST keyless connection without a request
in progress is closed (per address only once it has been open EVICT_GRACE_S, so that a client's
fresh connection has time to send its request); a new connection is never refused. A flood of
keyless connections therefore only shortens the life of other keyless connections: a keyed
client's new connection, which sends its request at once, is not among those closed.

A request whose key is valid (any request, on a server without keys) moves its connection
into a slot. With all `max_connections` slots taken, the slot idle longest (a keep-alive
between requests) is freed for it; only when every slot holds a request in progress is the
request answered 503. Keyed clients are thus admitted up to their own quota, the per-client
rate limit, whatever keyless peers do. Requests without a valid key (401s, /healthz) are
rate-limited per address (`keyless_rate_per_s`, 429).

Not limited by address: how fast connections are opened. A new connection's key is unknown,
and refusing one by its address would refuse keyed clients behind the same address (a NAT, a
proxy, a loopback test); bounding what keyless connections may hold does the job instead.

Everything here runs on the server's event loop thread (uvicorn's), so it needs no lock.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

EVICT_GRACE_S = 0.25
"""A keyless connection younger than this is not closed to keep its address within
`max_keyless_per_ip`: a client's fresh connection gets this long to send its request head."""
KEYLESS_BURST_S = 2.0
"""An address may spend this many seconds' worth of its keyless request rate at once."""
MAX_TRACKED_ADDRESSES = 4096
"""Keyless rate buckets kept; beyond, the full (idle) ones are forgotten."""

Peer = tuple[str, int]


class Guarded(Protocol):
    """What admission needs of a connection (oel.serving.connection.GuardedConnection)."""

    peer: Peer
    opened_at: float
    in_flight: int
    body_unread: bool
    """Its answer goes out before its request's body was read: close by lingering (the edge sets it)."""
    reading_body: asyncio.Event | None
    """Set by the edge while it reads a body; the connection sets it when the client shuts its side."""

    def close_now(self, reason: str) -> None: ...

    def began_request(self) -> None: ...

    def became_idle(self) -> None: ...


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    """Slots for connections that sent a request with a valid key."""
    max_keyless_connections: int
    max_keyless_per_ip: int
    keyless_rate_per_s: float
    """Requests a second without a valid key, per peer address; 0 = unlimited."""
    client_timeout_s: float

    @classmethod
    def of(cls, config: Any) -> ConnectionLimits:
        """The limits of a server config (ServeConfig, GatewayConfig: the same keys)."""
        return cls(config.max_connections, config.max_keyless_connections, config.max_keyless_per_ip,
                   config.keyless_rate_limit_per_s, config.client_timeout_s)


class Admission:
    """The open connections of one server: keyed slots and the keyless pool (see the module doc)."""

    def __init__(self, limits: ConnectionLimits, on_close: Callable[[str], None] = lambda reason: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.on_close = on_close
        self.clock = clock
        self.by_peer: dict[Peer, Guarded] = {}
        self.slots: dict[Guarded, None] = {}  # least recently active first
        self.keyless: dict[Guarded, None] = {}  # oldest first
        self.keyless_by_ip: dict[str, dict[Guarded, None]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def open(self) -> int:
        return len(self.by_peer)

    # ---- the connection's life (from oel.serving.connection) ---------------------------------
    def opened(self, conn: Guarded) -> None:
        """A new connection: keyless until a keyed request; may close older keyless ones."""
        self.by_peer[conn.peer] = conn
        self.keyless[conn] = None
        same_ip = self.keyless_by_ip.setdefault(conn.peer[0], {})
        same_ip[conn] = None
        if len(same_ip) > self.limits.max_keyless_per_ip:
            self._evict(same_ip, "keyless_per_ip", grace_s=EVICT_GRACE_S)
        if len(self.keyless) > self.limits.max_keyless_connections:
            self._evict(self.keyless, "keyless_total", grace_s=0.0)

    def closed(self, conn: Guarded) -> None:
        if self.by_peer.get(conn.peer) is conn:
            del self.by_peer[conn.peer]
        self.slots.pop(conn, None)
        self._drop_keyless(conn)

    def _evict(self, pool: dict[Guarded, None], reason: str, *, grace_s: float) -> None:
        """Close the oldest connection of `pool` without a request in progress (open >= grace_s)."""
        now = self.clock()
        victim = next((c for c in pool if c.in_flight == 0 and now - c.opened_at >= grace_s), None)
        if victim is not None:
            self.closed(victim)
            victim.close_now(f"evicted_{reason}")

    def _drop_keyless(self, conn: Guarded) -> None:
        if conn in self.keyless:
            del self.keyless[conn]
            same_ip = self.keyless_by_ip.get(conn.peer[0], {})
            same_ip.pop(conn, None)
            if not same_ip:
                self.keyless_by_ip.pop(conn.peer[0], None)

    # ---- requests (from the ASGI edge, oel.serving.edge) ------------------------------------
    def request_started(self, peer: Peer | None) -> None:
        conn = self.by_peer.get(peer) if peer else None
        if conn is not None:
            conn.in_flight += 1
            conn.began_request()

    def request_finished(self, peer: Peer | None) -> None:
        conn = self.by_peer.get(peer) if peer else None
        if conn is None:
            return
        conn.in_flight = max(0, conn.in_flight - 1)
        if conn.in_flight == 0:
            if conn in self.slots:
                self.slots.pop(conn)
                self.slots[conn] = None  # now the most recently active
            conn.became_idle()

    def admit(self, peer: Peer | None) -> bool:
        """A keyed request on `peer`'s connection: a slot for it (freeing the longest-idle one if
        all are taken); False when every slot holds a request in progress (the caller answers 503)."""
        conn = self.by_peer.get(peer) if peer else None
        if conn is None or conn in self.slots:
            return True
        if len(self.slots) >= self.limits.max_connections:
            idle = next((c for c in self.slots if c.in_flight == 0), None)
            if idle is None:
                return False
            self.closed(idle)
            idle.close_now("evicted_idle_keyed")
        self._drop_keyless(conn)
        self.slots[conn] = None
        return True

    def keyless_wait_s(self, peer: Peer | None) -> float:
        """0 when a request without a valid key from this address may go on (a token taken), else
        seconds until it may (the caller answers 429)."""
        rate = self.limits.keyless_rate_per_s
        if rate <= 0 or not peer:
            return 0.0
        burst = max(1.0, rate * KEYLESS_BURST_S)
        now = self.clock()
        tokens, then = self._buckets.pop(peer[0], (burst, now))
        tokens = min(burst, tokens + (now - then) * rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
        self._buckets[peer[0]] = (tokens - 1 if tokens >= 1 else tokens, now)
        if len(self._buckets) > MAX_TRACKED_ADDRESSES:
            self._forget_full_buckets(now, burst)
        return wait

    def _forget_full_buckets(self, now: float, burst: float) -> None:
        """Addresses whose bucket has refilled are as good as new: forget them (bounded memory)."""
        rate = self.limits.keyless_rate_per_s
        for ip, (tokens, then) in list(self._buckets.items()):
            if tokens + (now - then) * rate >= burst:
                del self._buckets[ip]

    def connection(self, peer: Peer | None) -> Guarded | None:
        return self.by_peer.get(peer) if peer else None

    def abort(self, peer: Peer | None, reason: str) -> None:
        """Cut the connection now (a reader that stopped reading): no lingering, no more writes."""
        conn = self.by_peer.get(peer) if peer else None
        if conn is not None:
            self.closed(conn)
            conn.close_now(reason)


SERVER_COUNTS: tuple[str, ...] = ("max_tokens_limit", "max_body_bytes", "max_queue", "max_connections",
                                  "max_keyless_connections", "max_keyless_per_ip")
"""Limits both servers (`oel serve`, `oel gateway`) hold that must be at least 1."""
SERVER_TIMEOUTS: tuple[str, ...] = ("client_timeout_s", "request_timeout_s")
"""Deadlines both servers hold, in seconds: > 0."""
SERVER_RATES: tuple[str, ...] = ("batch_window_s", "keyless_rate_limit_per_s")
"""Waits and rates both servers hold: finite and >= 0 (0 = none / unlimited)."""


def check_server_limits(config: Any, counts: Sequence[str] = (), timeouts: Sequence[str] = (),
                        rates: Sequence[str] = ()) -> None:
    """A server config's limits, the shared ones and its own (`counts` >= 1, `timeouts` > 0, `rates`
    finite >= 0), `max_prompt_tokens` >= 0 and the port: a ValueError naming the first bad field."""
    for name in (*SERVER_COUNTS, *counts):
        if getattr(config, name) < 1:
            raise ValueError(f"{name}: must be >= 1, got {getattr(config, name)}")
    if config.max_prompt_tokens < 0:
        raise ValueError(f"max_prompt_tokens: must be >= 0, got {config.max_prompt_tokens}")
    for name in (*SERVER_TIMEOUTS, *timeouts):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name}: must be > 0, got {getattr(config, name)}")
    for name in (*SERVER_RATES, *rates):
        if not (getattr(config, name) >= 0 and math.isfinite(getattr(config, name))):
            raise ValueError(f"{name}: must be a finite number >= 0, got {getattr(config, name)}")
    if not 0 <= config.port < 2**16:
        raise ValueError(f"port: must be in 0..65535, got {config.port}")
