"""Who answers the gateway's chat requests: a model in this process, or an upstream server.

Both give `complete(messages, params, body) -> Answer`: the generation plus the model version
that produced it, so the gateway can record and report exactly which weights answered.

`LocalResponder` batches like `oel serve` (handler threads queue, one worker generates what
arrived within `batch_window_s`), with its own small loop rather than `ChatServer`'s: the
worker takes the (backend, version) pair once per batch, which is what makes a hot swap safe.
`swap(backend, version)` only replaces that pair; the batch in progress finishes on the old
weights, every later batch runs on the new ones, and no request is dropped or re-queued.

`UpstreamResponder` forwards the request (always non-streaming) to an OpenAI-compatible
server (vLLM, llama.cpp, `oel serve`) and returns its answer; upstream failures are 502s.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from oel.collect.backends.base import Generation, SamplingParams
from oel.collect.backends.hf import HFBackend, RowRequest
from oel.collect.http_limits import RETRY_AFTER_S, RequestError
from oel.trajectory import Message

log = logging.getLogger(__name__)

QUEUE_POLL_S = 0.2
"""How often the idle batch worker checks whether the gateway is shutting down."""
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


_Pending = tuple[RowRequest, "Future[Answer]"]


class LocalResponder:
    """An HFBackend in this process, batched, whose weights can be swapped between batches."""

    def __init__(self, backend: HFBackend, version: int, *, max_batch_size: int, batch_window_s: float,
                 max_queue: int, request_timeout_s: float) -> None:
        self._current = (backend, version)
        self._swap_lock = threading.Lock()
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.request_timeout_s = request_timeout_s
        self._queue: queue.Queue[_Pending] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        self._thread = threading.Thread(target=self._batch_loop, name="oel-gateway-batcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Finish the batch in progress, then fail what still waits with 503."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.request_timeout_s)
        error = RequestError(503, "gateway is shutting down", retry_after_s=RETRY_AFTER_S)
        while True:
            try:
                _, fut = self._queue.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                fut.set_exception(error)

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def complete(self, messages: list[Message], params: SamplingParams, body: dict[str, Any]) -> Answer:
        fut: Future[Answer] = Future()
        try:
            self._queue.put_nowait((RowRequest(messages, params, params.seed), fut))
        except queue.Full:
            raise RequestError(503, f"gateway busy: {self._queue.maxsize} requests already waiting",
                               retry_after_s=RETRY_AFTER_S) from None
        try:
            return fut.result(timeout=self.request_timeout_s)
        except TimeoutError:
            fut.cancel()
            raise RequestError(504, f"no answer within {self.request_timeout_s}s") from None

    def _batch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=QUEUE_POLL_S)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.batch_window_s
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Pending]) -> None:
        live = [(row, fut) for row, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        with self._swap_lock:
            backend, version = self._current  # one pair for the whole batch: a swap waits for the next
        try:
            gens = backend.generate_rows([row for row, _ in live])
        except Exception as e:
            log.exception("generation failed for a batch of %d", len(live))
            for _, fut in live:
                fut.set_exception(e)
            return
        for (_, fut), gen in zip(live, gens):
            fut.set_result(Answer(gen, version))


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
