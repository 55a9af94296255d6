"""The online mode's gateway: an OpenAI-compatible endpoint that records every exchange (`oel gateway`).

Deployed agents talk to the gateway as to any OpenAI-compatible server; it answers from a model
in this process (`responder=local`, batched, hot-swappable) or from an upstream server
(`responder=upstream`, e.g. vLLM or `oel serve`), and records each exchange in the store
(oel.online.store) BEFORE the answer is sent: an acknowledged exchange or trajectory is durable.
`responder=none` only takes trajectories and session ends (an intake-only gateway).

Endpoints (the serving stack's one HTTP layer, oel.serving.app, with a store): GET /v1/models,
POST /v1/chat/completions (also `stream: true`, token by token from the in-process model),
POST /v1/sessions/{id}/end, POST /v1/trajectories (Idempotency-Key), GET /metrics (admin key),
GET /healthz (no key). Limits and deadlines: oel.serving.server and docs/online.md.

Hot swap: `swap_model(model_dir, version)` loads the new weights aside while the old ones serve,
then switches between batches. With `versions_dir` set, a watcher polls
`<versions_dir>/current.json` ({"version", "model_dir", "published"}, written atomically by the
scheduler after the model dir is complete) and swaps when the version changes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

from oel.backends.hf import HFBackend
from oel.config import Config, cfg
from oel.errors import ConfigError
from oel.models import ModelConfig
from oel.online.store import RETENTION_POLICIES, Store
from oel.serving.app import ServingState, build_app
from oel.serving.auth import DEFAULT_KEYS_ENV, ApiKeys, require_keys_off_loopback
from oel.serving.engine import Engine, LocalEngine, UpstreamEngine
from oel.serving.metrics import ServerMetrics
from oel.serving.admission import Admission, ConnectionLimits, check_server_limits
from oel.serving.server import HTTPServer

log = logging.getLogger(__name__)

CURRENT_FILE = "current.json"
DEFAULT_ADMIN_KEYS_ENV = "OEL_ADMIN_KEYS"
DEFAULT_UPSTREAM_KEY_ENV = "OEL_UPSTREAM_API_KEY"
RESPONDERS = ("local", "upstream", "none")


class GatewayConfig(Config):
    """`oel gateway`: the store, who answers, who may call, and the limits."""

    store: str = cfg("online/store.sqlite", "the store: a SQLite file (created if new) or a postgresql:// URL "
                                            "(docs/online.md)")
    retention: str = cfg("keep", "keep | delete_after_consolidation (the store's retention policy)")
    responder: Literal["local", "upstream", "none"] = cfg("local", "local: serve `model` in this process; upstream: "
                                                          "forward to upstream_url; none: trajectories only")
    model: ModelConfig = cfg(factory=ModelConfig, help="the model served in process (responder=local)")
    versions_dir: str = cfg("", "directory whose current.json names the model to serve; watched and hot-swapped; "
                            "empty = serve `model` only")
    watch_interval_s: float = cfg(2.0, "how often current.json is polled")
    session_idle_s: float = cfg(0.0, "end a session after this many seconds without an exchange (checked every "
                                     "idle_check_s); 0 = never")
    idle_check_s: float = cfg(30.0, "how often idle sessions are looked for (session_idle_s > 0)")
    upstream_url: str = cfg("", "base URL of the upstream OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    upstream_api_key_env: str = cfg(DEFAULT_UPSTREAM_KEY_ENV, "environment variable holding the upstream's key")
    host: str = cfg("127.0.0.1", "address to bind; any non-loopback address needs API keys")
    port: int = cfg(8100, "TCP port; 0 picks a free one (printed at start)")
    served_name: str = cfg("oel", "model name reported by /v1/models and in answers")
    api_keys: list[str] = cfg(factory=list, help="client keys, `client:key` (the client name is recorded)")
    api_keys_file: str = cfg("", "file of client keys, one `client:key` a line")
    api_keys_env: str = cfg(DEFAULT_KEYS_ENV, "environment variable of comma-separated client keys")
    admin_api_keys: list[str] = cfg(factory=list, help="admin keys (/metrics and control endpoints)")
    admin_api_keys_file: str = cfg("", "file of admin keys")
    admin_api_keys_env: str = cfg(DEFAULT_ADMIN_KEYS_ENV, "environment variable of comma-separated admin keys")
    rate_limit_per_s: float = cfg(0.0, "requests per second per client (token bucket); 0 = unlimited")
    rate_limit_burst: int = cfg(20, "requests a client may send at once before the rate applies")
    max_batch_size: int = cfg(16, "most chat requests generated together")
    batch_window_s: float = cfg(0.02, "how long the first request waits for others to batch with it")
    max_tokens_limit: int = cfg(1024, "largest max_tokens a request may ask for")
    max_body_bytes: int = cfg(4 << 20, "largest request body accepted, in bytes (413 beyond)")
    max_queue: int = cfg(128, "chat requests waiting for generation (or in flight upstream); more get 503 + "
                              "Retry-After")
    max_prompt_tokens: int = cfg(0, "most prompt tokens a request may send; 0 = the model's context minus max_tokens")
    max_connections: int = cfg(256, "connections of keyed clients at once; over it the longest-idle one is closed, "
                                    "or HTTP 503")
    max_keyless_connections: int = cfg(512, "connections that sent no request with a valid key yet, in all; over it "
                                            "the oldest is closed")
    max_keyless_per_ip: int = cfg(64, "the same, from one IP address (its oldest is closed once 0.25 s old)")
    keyless_rate_limit_per_s: float = cfg(20.0, "requests a second from one IP address without a valid key "
                                                "(401, /healthz); 0 = unlimited")
    client_timeout_s: float = cfg(30.0, "deadline for a request's headers, its body (408) and each write of its "
                                        "answer; idle keep-alives close")
    request_timeout_s: float = cfg(600.0, "a chat request unanswered after this long gets 504 (also the upstream's)")

    def model_post_init(self, context: Any, /) -> None:
        if self.retention not in RETENTION_POLICIES:
            raise ValueError(f"retention: expected one of {', '.join(RETENTION_POLICIES)}, got {self.retention!r}")
        if self.responder not in RESPONDERS:
            raise ValueError(f"responder: expected one of {', '.join(RESPONDERS)}, got {self.responder!r}")
        if self.responder == "upstream" and not self.upstream_url:
            raise ValueError("upstream_url: required when responder=upstream")
        check_server_limits(self, counts=("max_batch_size", "rate_limit_burst"),
                            timeouts=("watch_interval_s", "idle_check_s"), rates=("session_idle_s", "rate_limit_per_s"))

    def __repr__(self) -> str:
        """Every field but the keys themselves, which are only counted."""
        shown = [f"{k}=<{len(v)} keys>" if k.endswith("api_keys") else f"{k}={v!r}" for k, v in vars(self).items()]
        return f"GatewayConfig({', '.join(shown)})"

    def load_api_keys(self) -> tuple[ApiKeys, ApiKeys]:
        """(client keys, admin keys): an admin key opens /metrics and control endpoints, not chat."""
        clients = ApiKeys.load(self.api_keys, file=self.api_keys_file, env_var=self.api_keys_env)
        admins = ApiKeys.load(self.admin_api_keys, file=self.admin_api_keys_file, env_var=self.admin_api_keys_env)
        return clients, admins


class RateLimiter:
    """A token bucket per client: `burst` requests at once, then `rate_per_s` a second."""

    def __init__(self, rate_per_s: float, burst: int, clock: Any = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """0 when the request may go now (its token taken), else seconds until a token is free."""
        if self.rate_per_s <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            tokens, then = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate_per_s)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate_per_s


def read_current(versions_dir: str | os.PathLike) -> tuple[int, str] | None:
    """(version, model_dir) of `<versions_dir>/current.json`, None when absent; ConfigError when malformed."""
    path = Path(versions_dir) / CURRENT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable JSON file ({type(e).__name__})") from None
    version, model_dir = (data.get("version"), data.get("model_dir")) if isinstance(data, dict) else (None, None)
    if not isinstance(version, int) or isinstance(version, bool) or not isinstance(model_dir, str) or not model_dir:
        raise ConfigError(f"{path}: expected {{\"version\": int, \"model_dir\": str, ...}}")
    return version, model_dir


class Gateway:
    """The gateway server; `start()` returns at once, `close()` stops it. Use as a context manager."""

    def __init__(self, config: GatewayConfig, *, backend: HFBackend | None = None, version: int = 0,
                 store: Store | None = None) -> None:
        """`backend`: an already loaded in-process model (tests); else `config.model` or current.json is loaded."""
        self.config = config
        self.api_keys, self.admin_keys = config.load_api_keys()
        require_keys_off_loopback(config.host, self.api_keys, env_var=config.api_keys_env)
        self.rate_limiter = RateLimiter(config.rate_limit_per_s, config.rate_limit_burst)
        self._own_store = store is None
        self.store = store if store is not None else Store.open(config.store,
                                                                retention=config.retention)  # type: ignore[arg-type]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watched: tuple[int, str] | None = None
        try:
            self.responder = self._make_responder(backend, version)
            admission = Admission(ConnectionLimits.of(config))
            self.metrics = ServerMetrics("oel_gateway_", queue_depth=self._queue_depth,
                                         open_connections=lambda: admission.open,
                                         model_version=lambda: self.version, store_stats=self.store.stats)
            admission.on_close = lambda reason: self.metrics.closed.labels(reason=reason).inc()
            state = ServingState(
                realm="oel gateway", served_name=config.served_name, api_keys=self.api_keys,
                admin_keys=self.admin_keys, engine=self.responder, store=self.store, metrics=self.metrics,
                admission=admission, max_body_bytes=config.max_body_bytes, max_tokens_limit=config.max_tokens_limit,
                client_timeout_s=config.client_timeout_s, request_timeout_s=config.request_timeout_s,
                rate_limiter=self.rate_limiter, rate_limit_per_s=config.rate_limit_per_s)
            self.httpd = HTTPServer(build_app(state), config.host, config.port, admission,
                                    graceful_timeout_s=config.request_timeout_s)
        except BaseException:
            self._close_store()
            raise

    def _queue_depth(self) -> int:
        return self.responder.queue_depth() if self.responder is not None else 0

    def _make_responder(self, backend: HFBackend | None, version: int) -> Engine | None:
        c = self.config
        if c.responder == "none":
            return None
        if c.responder == "upstream":
            return UpstreamEngine(c.upstream_url, api_key=os.environ.get(c.upstream_api_key_env, "") if
                                  c.upstream_api_key_env else "", timeout_s=c.request_timeout_s,
                                  max_in_flight=c.max_queue)
        if backend is None:
            current = read_current(c.versions_dir) if c.versions_dir else None
            if current is not None:
                version, model_dir = current
                self._watched = current
                backend = self.load_backend(model_dir)
            else:
                backend = self.load_backend(c.model.name, c.model)
        return LocalEngine(backend, version, max_batch_size=c.max_batch_size, batch_window_s=c.batch_window_s,
                           max_queue=c.max_queue, request_timeout_s=c.request_timeout_s,
                           max_prompt_tokens=c.max_prompt_tokens, name="gateway")

    def load_backend(self, model_dir: str, model_cfg: ModelConfig | None = None) -> HFBackend:
        """Load weights for serving: the configured dtype/device, prefix store off (swaps make it stale)."""
        base = model_cfg or self.config.model
        mc = ModelConfig(name=model_dir, dtype=base.dtype, device=base.device, cache_dir=base.cache_dir)
        return HFBackend.from_model_config(mc, max_batch_size=self.config.max_batch_size, prefix_cache_bytes=0)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"

    @property
    def version(self) -> int:
        return self.responder.version if self.responder is not None else 0

    def start(self) -> Gateway:
        if self.responder is not None:
            self.responder.start()
        self.httpd.start()
        if self.config.versions_dir and isinstance(self.responder, LocalEngine):
            self._spawn(self._watch, "oel-gateway-watch")
        if self.config.session_idle_s > 0:
            self._spawn(self._close_idle, "oel-gateway-idle")
        log.info("gateway at %s (responder %s, model version %d)", self.url, self.config.responder, self.version)
        return self

    def _spawn(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def close(self) -> None:
        """Stop accepting, finish what generates, close the store, free the port."""
        self._stop.set()
        self.httpd.close()
        if self.responder is not None:
            self.responder.close()
        for t in self._threads:
            t.join(timeout=self.config.request_timeout_s)
        self._close_store()

    def _close_store(self) -> None:
        if self._own_store:
            self.store.close()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def swap_model(self, model_dir: str, version: int) -> None:
        """Load `model_dir` aside, then serve it from the next batch on; in-flight requests finish on the old."""
        if not isinstance(self.responder, LocalEngine):
            raise ConfigError("swap_model: only the in-process responder (responder=local) swaps weights")
        try:
            backend = self.load_backend(model_dir)
        except Exception:
            self.metrics.count_swap(ok=False)
            raise
        self.responder.swap(backend, version)
        self.metrics.count_swap(ok=True)
        log.info("now serving model version %d from %s", version, model_dir)

    def _close_idle(self) -> None:
        """End sessions idle for session_idle_s: a conversation whose agent never says it ended still
        becomes a trajectory (with the store's idle outcome), instead of waiting in the store for ever."""
        while not self._stop.wait(self.config.idle_check_s):
            try:
                ended = self.store.close_idle_sessions(self.config.session_idle_s)
                if ended:
                    log.info("ended %d idle session(s)", len(ended))
            except Exception as e:  # noqa: BLE001 - the next check retries; the operator reads the log
                log.error("idle sessions not ended: %s", e)

    def _watch(self) -> None:
        """Poll current.json; a new (version, model_dir) is swapped in; a failed one is not retried."""
        while not self._stop.wait(self.config.watch_interval_s):
            try:
                current = read_current(self.config.versions_dir)
                if current is None or current == self._watched:
                    continue
                self._watched = current
                self.swap_model(current[1], current[0])
            except Exception as e:  # noqa: BLE001 - the old model keeps serving; the operator reads the log
                log.error("model version from %s not served: %s", self.config.versions_dir, e)
