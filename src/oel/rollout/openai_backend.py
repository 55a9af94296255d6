"""A ChatBackend over any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, SGLang, TGI).

This is how users actually deploy a model, so collection and evaluation can run against
the deployment itself. The server batches; we keep it fed with up to `concurrency`
requests in flight (one per chat), each with its own timeout, and retry transient
failures (connection errors, timeouts, 429 and 5xx) with exponential backoff. A 4xx
answer other than 429 is our request's fault and fails at once.

Completion i of a call is sent with seed `derive_seed(params.seed, i)`, the same seed the
in-process backend uses, so `oel serve` answers exactly what the HF backend would.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from oel.config import cfg
from oel.errors import OELError
from oel.rollout.backend import Generation, SamplingParams
from oel.rollout.sampling import derive_seed
from oel.trajectory import Message

log = logging.getLogger(__name__)


class EndpointError(OELError):
    """The chat endpoint failed for good (after retries) or rejected the request."""


@dataclass
class EndpointConfig:
    """Where and how to reach an OpenAI-compatible chat endpoint."""

    base_url: str = cfg("http://127.0.0.1:8000/v1", "endpoint root, ending in /v1 (vLLM, llama.cpp server, SGLang, TGI, oel serve)")
    model: str = cfg("", "model name the endpoint serves (as listed by GET /v1/models); empty = the first one listed")
    api_key_env: str = cfg("OPENAI_API_KEY", "environment variable holding the API key; unset is fine for local servers")
    concurrency: int = cfg(32, "requests in flight at once; the server batches them (match collect batch_size)")
    timeout_s: float = cfg(120.0, "seconds one request may take before it is retried")
    max_retries: int = cfg(3, "retries of a transient failure (connection, timeout, 429, 5xx) before giving up")
    backoff_s: float = cfg(1.0, "first retry delay in seconds; doubles on each retry")
    send_top_k: bool = cfg(True, "send top_k (a vLLM/llama.cpp/SGLang extension); turn off for strict OpenAI servers")
    send_thinking: bool = cfg(True, "send chat_template_kwargs.enable_thinking (vLLM/SGLang/llama.cpp extension)")

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency: must be >= 1, got {self.concurrency}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s: must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries: must be >= 0, got {self.max_retries}")


class OpenAIBackend:
    """Completes chats by calling `POST {base_url}/chat/completions`, concurrently."""

    def __init__(self, config: EndpointConfig) -> None:
        import openai

        self.config = config
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        # Retries are ours (with logging and a clear final error), not the client's.
        self.client = openai.OpenAI(base_url=config.base_url, api_key=key or "not-needed",
                                    timeout=config.timeout_s, max_retries=0)
        self.model_id = config.model or self._first_model()

    def _first_model(self) -> str:
        try:
            models = [m.id for m in self.client.models.list()]
        except Exception as e:  # noqa: BLE001 - any client error means the same thing here
            raise EndpointError(f"{self.config.base_url}: cannot list models ({type(e).__name__}: {e})") from None
        if not models:
            raise EndpointError(f"{self.config.base_url}: serves no models; set endpoint.model")
        return models[0]

    def chat(self, prompts: Sequence[Sequence[Message]], params: SamplingParams) -> list[Generation]:
        """Complete every chat; request i carries seed derive_seed(params.seed, i)."""
        return self.chat_with_seeds(prompts, params, [derive_seed(params.seed, i) for i in range(len(prompts))])

    def chat_with_seeds(self, prompts: Sequence[Sequence[Message]], params: SamplingParams,
                        seeds: Sequence[int]) -> list[Generation]:
        """Like `chat`, but request i carries `seeds[i]` (collection seeds per episode)."""
        if len(seeds) != len(prompts):
            raise ValueError(f"seeds: expected {len(prompts)} (one per prompt), got {len(seeds)}")
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
            try:
                return _to_generation(self.client.chat.completions.create(**request))
            except Exception as e:  # noqa: BLE001 - classified just below
                if not _is_transient(e):
                    raise EndpointError(f"{self.config.base_url}: request rejected ({_describe(e)})") from None
                if attempt == self.config.max_retries:
                    raise EndpointError(f"{self.config.base_url}: failed after {attempt + 1} attempts "
                                        f"({_describe(e)})") from None
                log.warning("%s: %s; retry %d/%d in %.1fs", self.config.base_url, _describe(e),
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
