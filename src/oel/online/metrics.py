"""The gateway's operator numbers, in the Prometheus text exposition format (version 0.0.4).

Durable numbers (trajectories received/stored/duplicate/rejected, exchanges) come from the
store's own counters, so they survive a restart and agree across processes sharing one store;
what only this process knows (requests by status, queue depth, open connections, the model
version, swaps) is counted here, in memory.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "oel_gateway_"
STORE_COUNTERS = {
    "trajectories_received": "trajectories posted or ended sessions, stored or not",
    "trajectories_stored": "trajectories stored (new)",
    "trajectories_duplicate": "idempotent retries answered with the first result",
    "trajectories_rejected": "trajectories refused by validation",
    "exchanges_recorded": "chat exchanges recorded",
    "exchanges_rejected": "chat exchanges refused by validation",
}
STORE_GAUGES = {
    "trajectories_unconsumed": "complete trajectories no round has claimed",
    "sessions_open": "sessions not yet ended",
}


class GatewayMetrics:
    """Thread-safe in-memory counters of one gateway process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, int]] = Counter()
        self.swaps = 0
        self.swap_failures = 0

    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self._requests[(endpoint, status)] += 1

    def count_swap(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self.swaps += 1
            else:
                self.swap_failures += 1

    def requests(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return dict(self._requests)

    def render(self, store_stats: Mapping[str, int], *, queue_depth: int, open_connections: int,
               model_version: int) -> str:
        """The whole /metrics page."""
        lines: list[str] = []
        for name, help_ in STORE_COUNTERS.items():
            _metric(lines, name + "_total", "counter", help_, [("", store_stats.get(name, 0))])
        for name, help_ in STORE_GAUGES.items():
            _metric(lines, name, "gauge", help_, [("", store_stats.get(name, 0))])
        by_status = [(f'{{endpoint="{ep}",code="{code}"}}', n) for (ep, code), n in sorted(self.requests().items())]
        _metric(lines, "requests_total", "counter", "HTTP requests answered, by endpoint and status", by_status)
        _metric(lines, "queue_depth", "gauge", "chat requests waiting for generation", [("", queue_depth)])
        _metric(lines, "open_connections", "gauge", "HTTP connections being served", [("", open_connections)])
        _metric(lines, "model_version", "gauge", "the model version now answering", [("", model_version)])
        _metric(lines, "model_swaps_total", "counter", "hot swaps to a new model version", [("", self.swaps)])
        _metric(lines, "model_swap_failures_total", "counter", "new versions that failed to load",
                [("", self.swap_failures)])
        return "\n".join(lines) + "\n"


def _metric(lines: list[str], name: str, kind: str, help_: str, samples: list[tuple[str, int]]) -> None:
    lines.append(f"# HELP {PREFIX}{name} {help_}")
    lines.append(f"# TYPE {PREFIX}{name} {kind}")
    lines.extend(f"{PREFIX}{name}{labels} {value}" for labels, value in samples)
