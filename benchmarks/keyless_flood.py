"""A keyless connection flood against the serving stack: are keyed clients still answered?

    python benchmarks/keyless_flood.py [--rates 20,800] [--max-connections 6,256] [--seconds 6]

For each `--max-connections` a gateway runs as a child process (`python -m oel gateway
responder=none`: the HTTP layer `oel serve` shares, no model to load) on 127.0.0.1 with one
client key. For each `--rates` (new keyless connections a second) a flood thread opens
connections at that rate; each sends the first line and one header of a request without a key,
then nothing (a connection that never authenticates), and is closed by the flood when the
server closes it. Meanwhile a keyed client sends `GET /v1/models` with its key on a FRESH
connection every `--keyed-every-s` and counts the answers. Printed per run: the flood's
achieved rate, keyed requests answered 200, 503 and other, and their p50/p99 latency.

Flood and keyed client share 127.0.0.1, so limits by address alone cannot tell them apart:
what is measured is whether connections without a key can take what keyed clients need.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import selectors
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_smoke_flag  # noqa: E402
from _serving import percentile_ms  # noqa: E402
from oel.online.loadgen import GatewayProcess, free_port  # noqa: E402

KEY = "flood-bench-key-0123456789abcdef"
PARTIAL_HEAD = b"GET /v1/models HTTP/1.1\r\nHost: flood\r\n"
KEYED_TIMEOUT_S = 30.0
REAP_POLL_S = 0.0005
"""The flood's select timeout between connection attempts: closed connections are reaped meanwhile."""
SETTLE_S = 1.0
"""Pause between runs, for the server to close what the previous flood left."""
SMOKE_RATES, SMOKE_SECONDS, SMOKE_MAX_CONNECTIONS = "20", 0.5, "6"


class Flood:
    """Opens keyless connections at `rate` a second from one thread, closing each when the server does."""

    def __init__(self, port: int, rate: float) -> None:
        self.port, self.rate = port, rate
        self.opened = self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        interval, next_at = 1.0 / self.rate, time.monotonic()
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_at:
                    next_at += interval
                    self._open(sel)
                for key, _ in sel.select(timeout=max(0.0, min(REAP_POLL_S, next_at - time.monotonic()))):
                    _reap(sel, key.fileobj)
        finally:
            for key in list(sel.get_map().values()):
                _reap(sel, key.fileobj, force=True)
            sel.close()

    def _open(self, sel: selectors.BaseSelector) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
            sock.sendall(PARTIAL_HEAD)
            sock.setblocking(False)
        except OSError:
            self.refused += 1
            return
        self.opened += 1
        sel.register(sock, selectors.EVENT_READ)


def _reap(sel: selectors.BaseSelector, sock: socket.socket, force: bool = False) -> None:
    """Close `sock` if the server closed it (or answered it), or when `force`."""
    if not force:
        try:
            if sock.recv(4096):
                return  # an answer (503 ...): the close follows
        except BlockingIOError:
            return
        except OSError:
            pass
    sel.unregister(sock)
    sock.close()


def keyed_get(port: int) -> tuple[str, float]:
    """One keyed GET /v1/models on a fresh connection: (status or exception name, seconds)."""
    t0 = time.perf_counter()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=KEYED_TIMEOUT_S)
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        resp = conn.getresponse()
        resp.read()
        status = str(resp.status)
        conn.close()
    except (OSError, http.client.HTTPException) as e:
        status = type(e).__name__
    return status, time.perf_counter() - t0


def run_one(port: int, max_connections: int, rate: float, args: argparse.Namespace) -> dict[str, object]:
    flood = Flood(port, rate)
    flood.start()
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < args.seconds:
            status, took = keyed_get(port)
            statuses[status] += 1
            if status == "200":
                latencies.append(took)
            time.sleep(args.keyed_every_s)
    finally:
        wall = time.monotonic() - t0
        flood.stop()
    return {"max_connections": max_connections, "flood_rate_asked": rate,
            "flood_rate_achieved": round(flood.opened / wall, 1), "flood_connect_failures": flood.refused,
            "keyed": sum(statuses.values()), "keyed_200": statuses["200"],
            "keyed_statuses": dict(sorted(statuses.items())),
            "keyed_p50_ms": round(percentile_ms(latencies, 50), 1),
            "keyed_p99_ms": round(percentile_ms(latencies, 99), 1),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="20,800", help="comma-separated keyless connections a second, one run each")
    ap.add_argument("--max-connections", default="6,256", help="comma-separated max_connections, one gateway each")
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each run")
    ap.add_argument("--keyed-every-s", type=float, default=0.05, help="pause between the keyed client's requests")
    ap.add_argument("--workdir", default="", help="where stores and gateway logs go (default: a temp dir)")
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        args.rates, args.seconds, args.max_connections = SMOKE_RATES, SMOKE_SECONDS, SMOKE_MAX_CONNECTIONS
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="oel-keyless-flood-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for limit in (int(m) for m in args.max_connections.split(",")):
        gateway = GatewayProcess(workdir / f"store-{limit}.sqlite", free_port(), KEY,
                                 extra=(f"max_connections={limit}",), log_path=workdir / f"gateway-{limit}.log")
        gateway.start()
        try:
            for rate in (float(r) for r in args.rates.split(",")):
                print(json.dumps(run_one(gateway.port, limit, rate, args)), flush=True)
                time.sleep(SETTLE_S)
        finally:
            gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
