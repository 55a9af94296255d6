"""`oel serve`: the serving stack (oel.serving) over an in-process model, without a store.

It lets users serve a consolidated checkpoint to anything that speaks the OpenAI chat API, and
it gives the endpoint backend a REAL server to be tested against. It is the same HTTP layer as
`oel gateway` (oel.serving.app) in its store-less mode: `GET /v1/models`,
`POST /v1/chat/completions` (n = 1, streaming token by token with `stream: true`), `GET /metrics`
and `GET /healthz`, with the extensions vLLM and llama.cpp accept: `top_k` and
`chat_template_kwargs.enable_thinking`.

Concurrent requests are batched (oel.serving.engine.LocalEngine): requests arriving within
`batch_window_s` (up to `max_batch_size`) are generated in one padded batch. Sampling is
per-row seeded, so a request's random draws do not depend on its batch-mates; its LOGITS do,
through the padded batch's arithmetic: at float32 the difference is rounding-level (below 1e-4
of a logit, measured) and the same seeded request gave the same text alone and in batches, but
with bf16 weights (the loader's default) it is 0.6-0.7 of a logit and changes sampled text.
`batch_invariant=true` generates every request alone without the prefix store: its answer then
depends on the request alone, at the cost of batching (benchmarks/serve_load.py measures it).

Limits (docs/collection.md, "Serving a checkpoint"): bearer-token API keys on every endpoint
but /healthz (:mod:`oel.serving.auth`; no key is allowed only on a loopback address), strict
request validation (oel.serving.protocol), and bounds on everything a client can grow: body
size, max_tokens, prompt tokens (the model's context), queue length, open connections (keyed and
keyless apart, oel.serving.admission), and the time a client may take to send its request or to
take its answer (`client_timeout_s`, oel.serving.connection and oel.serving.edge).
"""

from __future__ import annotations

from typing import Any
import logging
import signal
import time

from oel.backends.hf import HFBackend
from oel.backends.prefix_cache import DEFAULT_PREFIX_CACHE_BYTES
from oel.backends.select import EngineKind, llamacpp_backend, resolve_engine
from oel.config import Config, cfg
from oel.errors import ConfigError
from oel.models import ModelConfig
from oel.serving.app import ServingState, build_app
from oel.serving.auth import DEFAULT_KEYS_ENV, ApiKeys, require_keys_off_loopback
from oel.serving.engine import LocalEngine
from oel.serving.metrics import ServerMetrics
from oel.serving.admission import Admission, ConnectionLimits, check_server_limits
from oel.serving.server import HTTPServer

__all__ = ["ChatServer", "ServeConfig", "serve"]

log = logging.getLogger(__name__)


class ServeConfig(Config):
    """`oel serve`: which model to serve, who may use it, and the server's limits."""

    model: ModelConfig = cfg(factory=ModelConfig, help="the model to serve (preset, .gguf, or HF directory)")
    engine: EngineKind = cfg("auto", "llamacpp (a preset or .gguf model) or hf; auto: llamacpp on CPU if installed, "
                                     "unless batch_invariant")
    adapter: str = cfg("", "llamacpp: a GGUF LoRA over the model's GGUF, e.g. a loop round's lora-over-base.gguf")
    host: str = cfg("127.0.0.1", "address to bind; any non-loopback address needs an API key")
    port: int = cfg(8000, "TCP port; 0 picks a free one (printed at start)")
    served_name: str = cfg("", "model name clients use in requests; empty = the model's id")
    api_keys: list[str] | str = cfg(factory=list, help="accepted bearer keys, `key` or `client:key`; prefer "
                                                       "api_keys_file or the environment")
    api_keys_file: str = cfg("", "file of accepted keys, one `key` or `client:key` a line, # comments; empty = none")
    api_keys_env: str = cfg(DEFAULT_KEYS_ENV, "environment variable of comma-separated accepted keys; empty = not read")
    max_batch_size: int = cfg(16, "most requests generated together in one batch")
    max_batch_tokens: int = cfg(32_768, "most padded prompt tokens in one forward pass (a batch is split beyond it)")
    batch_window_s: float = cfg(0.02, "how long the first request waits for others to batch with it")
    batch_invariant: bool = cfg(False, "generate each request alone, prefix store off: answers independent of "
                                       "other requests")
    max_tokens_limit: int = cfg(1024, "largest max_tokens a request may ask for")
    max_body_bytes: int = cfg(1 << 20, "largest request body accepted, in bytes")
    max_queue: int = cfg(128, "requests waiting for generation at once; more get HTTP 503 + Retry-After")
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
    request_timeout_s: float = cfg(600.0, "a request still unanswered after this long gets HTTP 504")

    def model_post_init(self, context: Any, /) -> None:
        # `api_keys=KEY` is one key. (Typed `list | str` so that the config loader's type error,
        # which quotes the value, never quotes a key given without brackets.)
        if isinstance(self.api_keys, str):
            self.api_keys = [self.api_keys]
        check_server_limits(self, counts=("max_batch_size", "max_batch_tokens"))

    def __repr__(self) -> str:
        """Every field but the keys themselves, which are only counted."""
        shown = [f"{k}=<{len(v)} keys>" if k == "api_keys" else f"{k}={v!r}" for k, v in vars(self).items()]
        return f"ServeConfig({', '.join(shown)})"

    def load_api_keys(self) -> ApiKeys:
        """The keys of all three sources (ConfigError names a bad entry's place, never the key)."""
        return ApiKeys.load(list(self.api_keys), file=self.api_keys_file, env_var=self.api_keys_env)


class ChatServer:
    """Serves an in-process engine (HF or llama.cpp) over HTTP; `start()` returns at once, `close()` stops
    everything.

    `api_keys` defaults to `config.load_api_keys()`; a non-loopback `host` without any key
    is refused with a ConfigError before the port is bound.
    """

    def __init__(self, backend: Any, config: ServeConfig, api_keys: ApiKeys | None = None) -> None:
        self.api_keys = config.load_api_keys() if api_keys is None else api_keys
        require_keys_off_loopback(config.host, self.api_keys, env_var=config.api_keys_env)
        if config.batch_invariant and getattr(backend, "prefix_store", None) is not None:
            raise ConfigError("batch_invariant: the backend keeps a prefix KV store, whose reused KV was computed "
                              "in other batches; build it with prefix_cache_bytes=0")
        self.backend = backend
        self.config = config
        self.served_name = config.served_name or backend.model_id
        self.engine = LocalEngine(
            backend, max_batch_size=1 if config.batch_invariant else config.max_batch_size,
            batch_window_s=config.batch_window_s, max_queue=config.max_queue,
            request_timeout_s=config.request_timeout_s, max_prompt_tokens=config.max_prompt_tokens, name="server")
        self.batcher = self.engine.batcher
        admission = Admission(ConnectionLimits.of(config))
        metrics = ServerMetrics("oel_serve_", queue_depth=self.engine.queue_depth,
                                open_connections=lambda: admission.open, model_version=lambda: 0)
        admission.on_close = lambda reason: metrics.closed.labels(reason=reason).inc()
        state = ServingState(realm="oel serve", served_name=self.served_name, api_keys=self.api_keys,
                             admin_keys=self.api_keys, engine=self.engine, store=None, metrics=metrics,
                             admission=admission, max_body_bytes=config.max_body_bytes,
                             max_tokens_limit=config.max_tokens_limit, client_timeout_s=config.client_timeout_s,
                             request_timeout_s=config.request_timeout_s)
        self.httpd = HTTPServer(build_app(state), config.host, config.port, admission,
                                graceful_timeout_s=config.request_timeout_s)
        self._started = False
        if not self.api_keys:
            log.warning("no API key configured: any local user or process can use %s (see api_keys_file)",
                        self.served_name)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"

    @property
    def _threads(self) -> list:  # type: ignore[type-arg]
        return self.httpd.threads

    def start(self) -> "ChatServer":
        if self._started:
            raise RuntimeError("ChatServer.start: already started (`with ChatServer(...)` starts it)")
        self._started = True
        self.engine.start()
        self.httpd.start()
        auth = f"API keys of {len(set(self.api_keys.clients))} clients" if self.api_keys else "no API key"
        log.info("serving %s at %s (%s)", self.served_name, self.url, auth)
        return self

    def close(self) -> None:
        """Stop accepting, finish the requests in progress, fail what still waits (503), free the port."""
        self.httpd.close()
        self.engine.close("server is shutting down")

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def serving_backend(config: ServeConfig) -> Any:
    """The engine `oel serve` generates on. Serving is long answers, decoding-bound, where llama.cpp is
    faster than HF on any CPU (docs/engines.md); answers that must not depend on their batch
    (`batch_invariant`) stay on HF, whose rows are computed alone there."""
    requested = "hf" if config.batch_invariant and config.engine == "auto" else config.engine
    try:
        engine = resolve_engine(requested, config.model, decoding_bound=True)
    except ValueError as e:
        raise ConfigError(f"engine: {e}") from None
    if engine == "llamacpp":
        return llamacpp_backend(config.model, max_batch_size=config.max_batch_size, adapter=config.adapter or None)
    if config.adapter:
        raise ConfigError(f"adapter: a GGUF LoRA runs on llama.cpp only, but the engine here is {engine} "
                          f"(engine=llamacpp with a preset or .gguf model)")
    return HFBackend.from_model_config(
        config.model, max_batch_size=config.max_batch_size, max_batch_tokens=config.max_batch_tokens,
        prefix_cache_bytes=0 if config.batch_invariant else DEFAULT_PREFIX_CACHE_BYTES)


def serve(config: ServeConfig) -> None:
    """Check the keys, load the model and serve until interrupted (the `oel serve` command)."""
    keys = config.load_api_keys()
    require_keys_off_loopback(config.host, keys, env_var=config.api_keys_env)  # before minutes of loading
    server = ChatServer(serving_backend(config), config, api_keys=keys).start()
    # SIGTERM (service managers, `kill`) stops it as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    auth = f"{len(keys)} API keys" if keys else "NO API KEY (loopback only)"
    print(f"oel serve: {server.served_name} at {server.url}, {auth} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(1)
    finally:
        server.close()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
