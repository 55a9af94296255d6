"""Connections and who may hold them, over real loopback sockets against a real gateway.

A kept-alive connection answers in well under 5 ms (TCP_NODELAY); a keyless connection flood
does not starve keyed clients; keyless requests are rate-limited per address; an identifying
header sent twice is refused; the connection limits wrap uvicorn's protocol without subclassing it.
"""

from __future__ import annotations

import http.client
import json
import selectors
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from oel.online.gateway import Gateway, GatewayConfig

KEY = "dana-key-" + "d" * 24
OTHER_KEY = "erin-key-" + "e" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}
WAIT_S = 30.0
KEEPALIVE_REQUESTS = 50
KEEPALIVE_P50_BOUND_MS = 5.0
"""The issue's bound for a request on a reused connection (Nagle + delayed ACK made it ~44 ms)."""
OPENAI_P50_BOUND_MS = 20.0
"""The official client adds its own milliseconds; the 44 ms stall is what this bound excludes."""
FLOOD_SECONDS = 2.5
FLOOD_HEAD_START_S = 0.3
"""The flood runs this long before the first keyed request: the keyless pool is full by then."""
KEYED_EVERY_S = 0.05
PARTIAL_HEAD = b"GET /v1/models HTTP/1.1\r\nHost: flood\r\n"


def gateway(tmp_path: Path, **cfg: object) -> Gateway:
    defaults: dict[str, object] = dict(store=str(tmp_path / "store.sqlite"), port=0, responder="none",
                                       api_keys=[f"dana:{KEY}"], api_keys_env="", admin_api_keys_env="")
    return Gateway(GatewayConfig(**{**defaults, **cfg}))  # type: ignore[arg-type]


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with gateway(tmp_path, max_connections=6) as g:
        yield g


def get(g: Gateway, path: str = "/v1/models", headers: dict[str, str] | None = None) -> tuple[int, dict]:
    host, port = g.httpd.server_address
    conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
    conn.request("GET", path, headers=AUTH if headers is None else headers)
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read() or b"{}")
    conn.close()
    return out


# ---- keep-alive --------------------------------------------------------------------------------

def test_fifty_requests_on_one_kept_alive_connection_take_under_5_ms_each(gw: Gateway) -> None:
    host, port = gw.httpd.server_address
    conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
    took = []
    for _ in range(KEEPALIVE_REQUESTS + 1):
        t0 = time.perf_counter()
        conn.request("GET", "/healthz", headers=AUTH)  # keyed: keyless ones are rate-limited per address
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read()
        took.append(time.perf_counter() - t0)
    sock = conn.sock
    conn.close()
    assert sock is not None
    p50_ms = 1000 * statistics.median(took[1:])  # the first opened the connection
    assert p50_ms < KEEPALIVE_P50_BOUND_MS, f"p50 {p50_ms:.1f} ms on one kept-alive connection"


def test_the_openai_client_on_its_kept_alive_connection_is_not_delayed(gw: Gateway) -> None:
    client = openai.OpenAI(base_url=gw.url, api_key=KEY, max_retries=0)
    client.models.list()
    took = []
    for _ in range(KEEPALIVE_REQUESTS):
        t0 = time.perf_counter()
        client.models.list()
        took.append(time.perf_counter() - t0)
    client.close()
    assert 1000 * statistics.median(took) < OPENAI_P50_BOUND_MS, f"p50 {1000 * statistics.median(took):.1f} ms"


# ---- a keyless flood -----------------------------------------------------------------------------

def flood(port: int, rate: float, stop: threading.Event, opened: list[int]) -> None:
    """Open keyless connections at `rate` a second, each sending a partial head; close each the server closes."""
    sel = selectors.DefaultSelector()
    next_at = time.monotonic()
    while not stop.is_set():
        if time.monotonic() >= next_at:
            next_at += 1.0 / rate
            sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
            sock.sendall(PARTIAL_HEAD)
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
            opened[0] += 1
        for key, _ in sel.select(timeout=max(0.0, min(0.001, next_at - time.monotonic()))):
            sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()


@pytest.mark.parametrize("rate", [20, 400])
def test_a_keyless_connection_flood_does_not_starve_keyed_clients(gw: Gateway, rate: int) -> None:
    """max_connections=6; keyless connections arrive faster than any slot could free: every keyed
    GET, each on a fresh connection, is answered 200."""
    stop, opened = threading.Event(), [0]
    t = threading.Thread(target=flood, args=(gw.httpd.server_address[1], rate, stop, opened), daemon=True)
    t.start()
    statuses: Counter[int] = Counter()
    try:
        time.sleep(FLOOD_HEAD_START_S)
        deadline = time.monotonic() + FLOOD_SECONDS
        while time.monotonic() < deadline:
            statuses[get(gw)[0]] += 1
            time.sleep(KEYED_EVERY_S)
    finally:
        stop.set()
        t.join()
    assert opened[0] >= rate * FLOOD_SECONDS / 2, f"the flood opened only {opened[0]} connections"
    assert statuses == Counter({200: sum(statuses.values())}), statuses


def test_keyless_requests_are_rate_limited_per_address_keyed_ones_are_not(tmp_path: Path) -> None:
    with gateway(tmp_path, keyless_rate_limit_per_s=5.0) as g:
        keyless = Counter(get(g, "/healthz", headers={})[0] for _ in range(30))
        wrong_key = Counter(get(g, headers={"Authorization": f"Bearer {OTHER_KEY}"})[0] for _ in range(5))
        keyed = Counter(get(g)[0] for _ in range(30))
    assert keyless[200] >= 5 and keyless[429] >= 10, keyless
    assert set(wrong_key) == {429}, wrong_key  # the address spent its keyless budget
    assert keyed == Counter({200: 30}), keyed


def test_idle_keyless_connections_take_no_slot_an_idle_keyed_one_gives_way(tmp_path: Path) -> None:
    """max_connections=2: keyless connections hold no slot; a keyed keep-alive between requests is
    closed for a new keyed client when both slots are taken."""
    with gateway(tmp_path, max_connections=2) as g:
        host, port = g.httpd.server_address
        idle = [socket.create_connection((host, port), timeout=WAIT_S) for _ in range(4)]
        kept = [http.client.HTTPConnection(host, port, timeout=WAIT_S) for _ in range(2)]
        for conn in kept:
            conn.request("GET", "/v1/models", headers=AUTH)
            assert conn.getresponse().read()
        assert get(g)[0] == 200  # a third keyed client: the longest-idle keyed connection gave way
        assert kept[0].sock is not None and kept[0].sock.recv(1) == b""
        assert g.httpd.open_connections >= len(idle)  # the keyless ones are all still open
        for sock in idle:
            sock.close()
        for conn in kept:
            conn.close()


# ---- headers that say who asks ---------------------------------------------------------------

@pytest.mark.parametrize("first,second", [(OTHER_KEY, KEY), (KEY, OTHER_KEY), (KEY, KEY)],
                         ids=["wrong-then-right", "right-then-wrong", "right-twice"])
def test_an_authorization_header_sent_twice_is_refused(gw: Gateway, first: str, second: str) -> None:
    with socket.create_connection(gw.httpd.server_address, timeout=WAIT_S) as sock:
        sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {first}\r\n"
                     f"Authorization: Bearer {second}\r\n\r\n".encode())
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        err = json.loads(resp.read())
    assert resp.status == 400 and err["error"]["message"].startswith("Authorization: sent more than once")


# ---- on uvicorn's public interface -----------------------------------------------------------

def test_the_limits_wrap_uvicorns_protocol_without_subclassing_it(gw: Gateway) -> None:
    """The connection limits drive uvicorn's protocol through asyncio's interface only, so a new
    uvicorn (this one: the newest at the time of writing) cannot break them silently."""
    from oel.serving.connection import GuardedConnection

    assert not issubclass(GuardedConnection, H11Protocol)
    assert tuple(int(x) for x in uvicorn.__version__.split(".")[:2]) >= (0, 34)
    assert get(gw)[0] == 200
