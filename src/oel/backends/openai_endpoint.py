"""A ChatBackend over any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, SGLang, TGI).

This is how users actually deploy a model, so collection and evaluation can run against
the deployment itself. The server batches; we keep it fed with up to `concurrency`
requests in flight (one per chat), each with its own timeout, and retry transient
failures (connection errors, timeouts, 429 and 5xx) with exponential backoff. A 4xx
answer other than 429 is our request's fault and fails at once.

Completion i of a call is sent with seed `derive_seed(params.seed, i)`, the same seed the
in-process backend uses, so `oel serve` answers exactly what the HF backend would.

Several servers of the same model (`base_urls`, e.g. one vLLM per GPU): each request goes
to the server with the fewest requests of ours in flight (ties in turn), and a retry after a
transient failure picks again, so it may land on another server. `concurrency` bounds the
requests in flight over all servers together. A request's random stream depends on its seed
only; its text then does not depend on the server either where the servers' numerics are
batch invariant (float32, or `oel serve batch_invariant=true`; see docs/collection.md).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from oel.backends.base import Generation, SamplingParams
from oel.backends.sampling import check_row_seeds, row_seeds
from oel.config import Config, cfg
from oel.errors import OELError
from oel.trajectory import Message

log = logging.getLogger(__name__)


class EndpointError(OELError):
    """The chat endpoint failed for good (after retries) or rejected the request."""


class EndpointConfig(Config):
    """Where and how to reach an OpenAI-compatible chat endpoint."""

    base_url: str = cfg("http://127.0.0.1:8000/v1", "endpoint root, ending in /v1 (vLLM, llama.cpp server, "
                                                    "SGLang, TGI, oel serve)")
    base_urls: list[str] = cfg(help="more roots serving the SAME model (a cluster); each request goes to the "
                                    "least busy of base_url + these", factory=list)
    model: str = cfg("", "model name the endpoint serves (as listed by GET /v1/models); empty = the first one listed")
    api_key_env: str = cfg("OPENAI_API_KEY", "environment variable holding the API key; unset is fine for local "
                                             "servers")
    concurrency: int = cfg(32, "requests in flight at once over all servers; each server batches its share "
                               "(match collect batch_size)")
    timeout_s: float = cfg(120.0, "seconds one request may take before it is retried")
    max_retries: int = cfg(3, "retries of a transient failure (connection, timeout, 429, 5xx) before giving up")
    backoff_s: float = cfg(1.0, "first retry delay in seconds; doubles on each retry")
    send_top_k: bool = cfg(True, "send top_k (a vLLM/llama.cpp/SGLang extension); turn off for strict OpenAI servers")
    send_thinking: bool = cfg(True, "send chat_template_kwargs.enable_thinking (vLLM/SGLang/llama.cpp extension)")

    def model_post_init(self, context: Any, /) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency: must be >= 1, got {self.concurrency}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s: must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries: must be >= 0, got {self.max_retries}")
        urls = self.urls
        if len(set(urls)) != len(urls):
            raise ValueError(f"base_urls: each server once, got {urls}")

    @property
    def urls(self) -> list[str]:
        """Every server: base_url first, then base_urls."""
        return [u for u in [self.base_url, *self.base_urls] if u]


@dataclass
class _Server:
    """One endpoint and our bookkeeping of it (guarded by the backend's lock)."""

    url: str
    client: Any
    in_flight: int = 0
    peak_in_flight: int = 0
    completed: int = 0
    failures: int = 0
    order: int = 0
    """Position in the config: breaks ties between equally busy servers in turn."""


class OpenAIBackend:
    """Completes chats by calling `POST {url}/chat/completions` on one or more servers, concurrently."""

    def __init__(self, config: EndpointConfig) -> None:
        import openai

        self.config = config
        if not config.urls:
            raise EndpointError("endpoint.base_url: empty; give the server's root URL (ending in /v1)")
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        # Retries are ours (with logging and a clear final error), not the client's.
        self.servers = [_Server(url, openai.OpenAI(base_url=url, api_key=key or "not-needed",
                                                   timeout=config.timeout_s, max_retries=0), order=i)
                        for i, url in enumerate(config.urls)]
        self.client = self.servers[0].client
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._in_flight = 0
        self.peak_in_flight = 0
        """The most requests this backend had in flight at once, over all servers."""
        self.model_id = config.model or self._first_model(self.servers[0])
        if len(self.servers) > 1:
            for server in self.servers:  # a cluster must serve one model: check now, not mid-run
                if self.model_id not in self._models(server):
                    raise EndpointError(f"{server.url}: does not serve model {self.model_id!r}")

    def _models(self, server: _Server) -> list[str]:
        try:
            return [m.id for m in server.client.models.list()]
        except Exception as e:  # noqa: BLE001 - any client error means the same thing here
            raise EndpointError(f"{server.url}: cannot list models ({type(e).__name__}: {e})") from None

    def _first_model(self, server: _Server) -> str:
        models = self._models(server)
        if not models:
            raise EndpointError(f"{server.url}: serves no models; set endpoint.model")
        return models[0]

    @contextmanager
    def _pick(self) -> Iterator[_Server]:
        """The server with the fewest of our requests in flight (ties: the next in turn)."""
        with self._lock:
            turn = next(self._turn)
            n = len(self.servers)
            server = min(self.servers, key=lambda s: (s.in_flight, (s.order - turn) % n))
            server.in_flight += 1
            server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        ok = False
        try:
            yield server
            ok = True
        finally:
            with self._lock:
                server.in_flight -= 1
                self._in_flight -= 1
                server.completed += int(ok)
                server.failures += int(not ok)

    def stats(self) -> list[dict[str, Any]]:
        """Per server: requests completed and failed, and the most we had in flight at once."""
        with self._lock:
            return [{"url": s.url, "completed": s.completed, "failures": s.failures,
                     "peak_in_flight": s.peak_in_flight} for s in self.servers]

    def chat(self, prompts: Sequence[Sequence[Message]], params: SamplingParams) -> list[Generation]:
        """Complete every chat; request i carries seed derive_seed(params.seed, i)."""
        return self.chat_with_seeds(prompts, params, row_seeds(params.seed, len(prompts)))

    def chat_with_seeds(self, prompts: Sequence[Sequence[Message]], params: SamplingParams,
                        seeds: Sequence[int]) -> list[Generation]:
        """Like `chat`, but request i carries `seeds[i]` (collection seeds per episode)."""
        check_row_seeds(prompts, seeds)
        if not prompts:
            return []
        workers = min(self.config.concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="oel-endpoint") as pool:
            futures = [pool.submit(self._one, p, params, s) for p, s in zip(prompts, seeds)]
            return [f.result() for f in futures]

    def _request(self, messages: Sequence[Message], params: SamplingParams, seed: int) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.config.send_top_k and params.top_k > 0:
            extra["top_k"] = params.top_k
        if self.config.send_thinking:
            extra["chat_template_kwargs"] = {"enable_thinking": params.enable_thinking}
        return dict(
            model=self.model_id,
            messages=[{"role": m.role, "content": m.content} for m in messages],
            temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
            seed=seed, n=1, extra_body=extra or None,
        )

    def _one(self, messages: Sequence[Message], params: SamplingParams, seed: int) -> Generation:
        request = self._request(messages, params, seed)
        delay = self.config.backoff_s
        for attempt in range(self.config.max_retries + 1):
            url = ""
            try:
                with self._pick() as server:
                    url = server.url
                    return _to_generation(server.client.chat.completions.create(**request))
            except Exception as e:  # noqa: BLE001 - classified just below
                if not _is_transient(e):
                    raise EndpointError(f"{url}: request rejected ({_describe(e)})") from None
                if attempt == self.config.max_retries:
                    raise EndpointError(f"{url}: failed after {attempt + 1} attempts "
                                        f"({_describe(e)})") from None
                log.warning("%s: %s; retry %d/%d in %.1fs", url, _describe(e),
                            attempt + 1, self.config.max_retries, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")


def _to_generation(resp: Any) -> Generation:
    """Text and token counts of a response; counts are 0 when the server sends no `usage`."""
    if not resp.choices:
        raise EndpointError("endpoint answered with no choices")
    choice = resp.choices[0]
    usage = getattr(resp, "usage", None)
    return Generation(
        text=choice.message.content or "",
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        finish_reason=choice.finish_reason or "stop",
    )


def _is_transient(e: Exception) -> bool:
    import openai

    if isinstance(e, (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError)):
        return True
    return isinstance(e, openai.APIStatusError) and e.status_code >= 500


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]
