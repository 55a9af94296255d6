"""A loopback load generator for the gateway: many clients POST trajectories, retrying until acknowledged.

Shared by tests/test_online_gateway_load.py (bounded) and benchmarks/gateway_load.py (the
acceptance size). Each client keeps one keep-alive connection and posts its trajectories in
turn, each with its own Idempotency-Key; a connection error, a 5xx or a 429 is retried with
exponential backoff and the SAME key until the gateway answers 200/201. So a gateway killed
mid-request (the row committed, the answer lost) is retried into a duplicate answer carrying
the first id, never into a second row. `verify` then checks the store: every acknowledged
trajectory stored exactly once, nothing stored that was not acknowledged.

`GatewayProcess` runs `python -m oel gateway` as a child (kill -9 and restart on
the same port and store file).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oel.online.store import Store

BACKOFF_FIRST_S = 0.02
BACKOFF_MAX_S = 1.0
REQUEST_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 120.0
READY_POLL_S = 0.05
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
PERCENT = 100


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def make_trajectory(client: int, i: int) -> dict[str, Any]:
    """A small valid trajectory in the oel.trajectory schema, distinct per (client, i)."""
    task = f"client {client} task {i}"
    return {"id": f"c{client}-t{i}", "env_id": "load", "seed": i, "model_id": "agent", "outcome": "done",
            "passed": i % 2 == 0, "turns": [{"prompt": [{"role": "user", "content": task}], "observation": task,
                                             "response": "ok", "feedback": "fine"}]}


@dataclass
class LoadResult:
    """What the clients saw. `acked`: idempotency key -> trajectory id the gateway acknowledged."""

    acked: dict[str, str] = field(default_factory=dict)
    ack_latencies_s: list[float] = field(default_factory=list)
    """First attempt to acknowledgement, retries included."""
    attempt_latencies_s: list[float] = field(default_factory=list)
    """One answered HTTP request each."""
    statuses: Counter[str] = field(default_factory=Counter)
    """HTTP status codes, plus connection errors by exception type."""
    requests: int = 0
    retries: int = 0
    failed: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.ack_latencies_s)
        att = sorted(self.attempt_latencies_s)
        return {"acknowledged": len(self.acked), "requests": self.requests, "retries": self.retries,
                "failed": len(self.failed), "wall_s": round(self.wall_s, 2),
                "throughput_per_s": round(len(self.acked) / self.wall_s, 1) if self.wall_s else 0.0,
                "ack_latency_ms": {"p50": _ms(lat, 50), "p99": _ms(lat, 99), "max": _ms(lat, PERCENT)},
                "request_latency_ms": {"p50": _ms(att, 50), "p99": _ms(att, 99)},
                "statuses": dict(sorted(self.statuses.items()))}


def _ms(sorted_s: list[float], pct: int) -> float:
    if not sorted_s:
        return float("nan")
    if pct >= PERCENT:
        return round(sorted_s[-1] * 1000, 1)
    return round(statistics.quantiles(sorted_s, n=PERCENT, method="inclusive")[pct - 1] * 1000, 1)


class _Client:
    """One client: a keep-alive connection, reopened after any connection error."""

    def __init__(self, host: str, port: int, api_key: str, result: LoadResult, deadline: float) -> None:
        self.host, self.port, self.result, self.deadline = host, port, result, deadline
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
        self.conn: http.client.HTTPConnection | None = None

    def post(self, key: str, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        start, backoff = time.monotonic(), BACKOFF_FIRST_S
        while time.monotonic() < self.deadline:
            outcome, answer = self._attempt(key, data)
            if outcome in ("200", "201"):
                with self.result._lock:
                    self.result.acked[key] = answer["id"]
                    self.result.ack_latencies_s.append(time.monotonic() - start)
                return
            if outcome.isdigit() and int(outcome) not in RETRYABLE_STATUSES:
                break
            with self.result._lock:
                self.result.retries += 1
            time.sleep(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)
        with self.result._lock:
            self.result.failed.append(key)

    def _attempt(self, key: str, data: bytes) -> tuple[str, Any]:
        """(status or exception name, parsed body); a connection error closes the connection."""
        t0 = time.monotonic()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT_S)
            self.conn.request("POST", "/v1/trajectories", body=data, headers={**self.headers, "Idempotency-Key": key})
            resp = self.conn.getresponse()
            answer = json.loads(resp.read() or b"{}")
            outcome = str(resp.status)
            if resp.getheader("Connection", "").lower() == "close":
                self._drop()
        except (OSError, http.client.HTTPException, ValueError) as e:
            self._drop()
            outcome, answer = type(e).__name__, None
        with self.result._lock:
            self.result.requests += 1
            self.result.statuses[outcome] += 1
            if outcome.isdigit():
                self.result.attempt_latencies_s.append(time.monotonic() - t0)
        return outcome, answer

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None


def run_load(host: str, port: int | Sequence[int], api_key: str, *, trajectories: int, clients: int, timeout_s: float,
             result: LoadResult | None = None) -> LoadResult:
    """`clients` threads post `trajectories` in all (split evenly); returns when each is acknowledged or given up.

    Several ports: client c talks to gateway c mod n (several gateways writing one store at once)."""
    ports = [port] if isinstance(port, int) else list(port)
    result = result if result is not None else LoadResult()
    deadline = time.monotonic() + timeout_s
    per_client = [list(range(c, trajectories, clients)) for c in range(clients)]

    def work(c: int) -> None:
        client = _Client(host, ports[c % len(ports)], api_key, result, deadline)
        for i in per_client[c]:
            client.post(f"load-c{c}-t{i}", make_trajectory(c, i))
        client._drop()

    threads = [threading.Thread(target=work, args=(c,), name=f"load-client-{c}") for c in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall_s = time.monotonic() - t0
    return result


def verify(store_path: str | os.PathLike, result: LoadResult) -> dict[str, Any]:
    """Every acknowledged trajectory stored exactly once, and nothing else stored."""
    with Store.open(store_path) as store:
        stored = store.trajectories()
    ids = [t.id for t in stored]
    posted = [t.meta["online"]["posted_id"] for t in stored]
    acked_ids = set(result.acked.values())
    return {"stored_rows": len(stored), "acknowledged": len(result.acked),
            "distinct_stored_ids": len(set(ids)), "distinct_posted_ids": len(set(posted)),
            "acked_ids_all_stored": acked_ids <= set(ids), "stored_all_acked": set(ids) <= acked_ids,
            "exactly_once": len(stored) == len(set(posted)) == len(result.acked) == len(acked_ids)
            and set(ids) == acked_ids}


class GatewayProcess:
    """`python -m oel gateway` as a child process, on a fixed port and store file."""

    def __init__(self, store: str | os.PathLike, port: int, api_key: str, *, extra: tuple[str, ...] = (),
                 log_path: str | os.PathLike | None = None) -> None:
        self.port = port
        self.args = [sys.executable, "-m", "oel", "gateway", f"store={store}", f"port={port}",
                     "responder=none", *extra]
        self.env = {**os.environ, "OEL_API_KEYS": f"load:{api_key}", "OEL_ADMIN_KEYS": ""}
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> float:
        """Start and wait until /healthz answers; returns the seconds it took."""
        t0 = time.monotonic()
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1
        while not self._healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode} before serving (see {self.log_path})")
            if time.monotonic() - t0 > READY_TIMEOUT_S:
                raise RuntimeError(f"gateway not ready within {READY_TIMEOUT_S}s")
            time.sleep(READY_POLL_S)
        return time.monotonic() - t0

    def _healthy(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=READY_TIMEOUT_S)


def kill_and_restart_when(gateway: GatewayProcess, result: LoadResult, acked_at_least: int,
                          events: list[str]) -> threading.Thread:
    """A thread that SIGKILLs the gateway once `acked_at_least` are acknowledged, then restarts it."""

    def watch() -> None:
        while len(result.acked) < acked_at_least:
            time.sleep(READY_POLL_S / 5)
        gateway.kill9()
        events.append(f"SIGKILL after {len(result.acked)} acknowledged")
        events.append(f"restarted in {gateway.start():.2f}s, {len(result.acked)} acknowledged by then")

    t = threading.Thread(target=watch, name="load-killer", daemon=True)
    t.start()
    return t
