"""Who answers the gateway's chat requests: a model in this process, or an upstream server.

Both give `complete(messages, params, body) -> Answer`: the generation plus the model version
that produced it, so the gateway can record and report exactly which weights answered.

`LocalResponder` batches like `oel serve` (the same `oel.collect.batcher.Batcher`); its batch
function takes the (backend, version) pair once per batch, which is what makes a hot swap safe.
`swap(backend, version)` only replaces that pair; the batch in progress finishes on the old
weights, every later batch runs on the new ones, and no request is dropped or re-queued.

`UpstreamResponder` forwards the request (always non-streaming) to an OpenAI-compatible
server (vLLM, llama.cpp, `oel serve`) and returns its answer; upstream failures are 502s.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from oel.collect.backends.base import Generation, SamplingParams
from oel.collect.backends.hf import HFBackend, RowRequest
from oel.collect.batcher import Batcher
from oel.collect.http_limits import RETRY_AFTER_S, RequestError
from oel.trajectory import Message

log = logging.getLogger(__name__)

UPSTREAM_ERROR_CHARS = 200
"""How much of an upstream error body is quoted in the 502 message."""


@dataclass(frozen=True)
class Answer:
    """One completion and the model version that produced it."""

    generation: Generation
    version: int


class Responder(Protocol):
    version: int

    def start(self) -> None: ...

    def close(self) -> None: ...

    def queue_depth(self) -> int: ...

    def complete(self, messages: list[Message], params: SamplingParams, body: dict[str, Any]) -> Answer: ...


class LocalResponder:
    """An HFBackend in this process, batched, whose weights can be swapped between batches."""

    def __init__(self, backend: HFBackend, version: int, *, max_batch_size: int, batch_window_s: float,
                 max_queue: int, request_timeout_s: float) -> None:
        self._current = (backend, version)
        self._swap_lock = threading.Lock()
        self.batcher: Batcher[Answer] = Batcher(self._run_batch, max_batch_size=max_batch_size,
                                                batch_window_s=batch_window_s, max_queue=max_queue,
                                                request_timeout_s=request_timeout_s, name="gateway")

    @property
    def version(self) -> int:
        return self._current[1]

    @property
    def backend(self) -> HFBackend:
        return self._current[0]

    def swap(self, backend: HFBackend, version: int) -> None:
        """Serve `backend` from the next batch on (the one running keeps its weights)."""
        with self._swap_lock:
            self._current = (backend, version)

    def start(self) -> None:
        self.batcher.start()

    def close(self) -> None:
        """Finish the batch in progress, then fail what still waits with 503."""
        self.batcher.close("gateway is shutting down")

    def queue_depth(self) -> int:
        return self.batcher.queue_depth()

    def complete(self, messages: list[Message], params: SamplingParams, body: dict[str, Any]) -> Answer:
        return self.batcher.submit(RowRequest(messages, params, params.seed))

    def _run_batch(self, rows: Sequence[RowRequest]) -> list[Answer]:
        with self._swap_lock:
            backend, version = self._current  # one pair for the whole batch: a swap waits for the next
        return [Answer(gen, version) for gen in backend.generate_rows(rows)]


class UpstreamResponder:
    """Forwards chat requests to an OpenAI-compatible server; its answers are recorded as ours."""

    version = 0

    def __init__(self, base_url: str, *, api_key: str = "", timeout_s: float) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self.timeout_s = timeout_s

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    def queue_depth(self) -> int:
        return 0

    def complete(self, messages: list[Message], params: SamplingParams, body: dict[str, Any]) -> Answer:
        forwarded = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        reply = self._post(forwarded)
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] or ""
            usage = reply.get("usage") or {}
            gen = Generation(text=text, prompt_tokens=int(usage.get("prompt_tokens", 0)),
                             completion_tokens=int(usage.get("completion_tokens", 0)),
                             finish_reason=choice.get("finish_reason") or "stop")
        except (KeyError, IndexError, TypeError, ValueError):
            raise RequestError(502, "upstream: answer is not an OpenAI chat completion") from None
        return Answer(gen, self.version)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read()[:UPSTREAM_ERROR_CHARS].decode("utf-8", "replace")
            status = e.code if 400 <= e.code < 500 and e.code not in (401, 403) else 502
            raise RequestError(status, f"upstream answered {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise RequestError(502, f"upstream {self.url}: {type(e).__name__}: {e}",
                               retry_after_s=RETRY_AFTER_S) from None
