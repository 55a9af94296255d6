"""The server's operator numbers through the official `prometheus_client` (GET /metrics).

Each server owns its own CollectorRegistry, so that two servers in one process (tests, a
gateway in front of `oel serve`) never mix their counts. Metric names start with
`oel_gateway_` or `oel_serve_`, by mode.

Durable numbers (trajectories received/stored/duplicate/rejected, exchanges) come from the
store's own counters at scrape time, so they survive a restart and agree across processes
sharing one store; what only this process knows (requests by endpoint and status, queue depth,
open connections, the model version, swaps, time to first token) is counted here, in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What generate_latest writes (newer prometheus_client versions name 1.0.0 their latest)."""
STORE_COUNTERS = {
    "trajectories_received": "trajectories posted or ended sessions, stored or not",
    "trajectories_stored": "trajectories stored (new)",
    "trajectories_duplicate": "idempotent retries answered with the first result",
    "trajectories_rejected": "trajectories refused by validation",
    "exchanges_recorded": "chat exchanges recorded",
    "exchanges_rejected": "chat exchanges refused by validation",
    "exchanges_incomplete": "chat exchanges whose client was lost before it had the whole answer",
}
STORE_GAUGES = {
    "trajectories_unconsumed": "complete trajectories no round has claimed",
    "sessions_open": "sessions not yet ended",
}
FIRST_TOKEN_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _StoreCollector:
    """Reads the store's durable counters when /metrics is scraped."""

    def __init__(self, prefix: str, stats: Callable[[], Mapping[str, int]]) -> None:
        self.prefix, self.stats = prefix, stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        for name, help_ in STORE_COUNTERS.items():
            yield CounterMetricFamily(self.prefix + name, help_, value=stats.get(name, 0))
        for name, help_ in STORE_GAUGES.items():
            yield GaugeMetricFamily(self.prefix + name, help_, value=stats.get(name, 0))


class ServerMetrics:
    """One server's counters and gauges, in a registry of its own."""

    def __init__(self, prefix: str, *, queue_depth: Callable[[], float], open_connections: Callable[[], float],
                 model_version: Callable[[], float],
                 store_stats: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(prefix + "requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "code"], registry=r)
        Gauge(prefix + "queue_depth", "chat requests waiting for generation", registry=r).set_function(queue_depth)
        Gauge(prefix + "open_connections", "HTTP connections open", registry=r).set_function(open_connections)
        Gauge(prefix + "model_version", "the model version now answering", registry=r).set_function(model_version)
        self._swaps = Counter(prefix + "model_swaps", "hot swaps to a new model version", registry=r)
        self._swap_failures = Counter(prefix + "model_swap_failures", "new versions that failed to load", registry=r)
        self.swaps = 0
        self.swap_failures = 0
        self.first_token = Histogram(prefix + "first_token_seconds", "time from a streamed request's arrival to "
                                     "its first answer text", buckets=FIRST_TOKEN_BUCKETS_S, registry=r)
        self.closed = Counter(prefix + "connections_closed", "connections the server closed, by reason",
                              ["reason"], registry=r)
        if store_stats is not None:
            r.register(_StoreCollector(prefix, store_stats))

    def count_request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint=endpoint, code=str(status)).inc()

    def count_swap(self, ok: bool) -> None:
        if ok:
            self.swaps += 1
            self._swaps.inc()
        else:
            self.swap_failures += 1
            self._swap_failures.inc()

    def render(self) -> bytes:
        """The whole /metrics page (text exposition format 0.0.4)."""
        return generate_latest(self.registry)
