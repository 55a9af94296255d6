"""Request batching for the servers (`oel serve`, the gateway's in-process model).

Handler threads `submit` one request each and wait; one worker thread takes whatever arrived
within `batch_window_s` (up to `max_batch_size`) and hands the batch to `run_batch`, which
returns one result per request. The queue is bounded (a full one is an HTTP 503 with
Retry-After), a request that times out is cancelled so the worker skips it instead of
generating for nobody, and closing fails whatever still waits with 503. A batch that fails is
run again row by row, so that one bad request fails alone and never its batch-mates.

`submit` blocks its thread until the answer; `enqueue` returns the Future at once (the
asynchronous server awaits it without holding a thread).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

from oel.backends.hf import RowRequest
from oel.serving.protocol import RETRY_AFTER_S, RequestError

log = logging.getLogger(__name__)

R = TypeVar("R")
QUEUE_POLL_S = 0.2
"""How often the idle worker checks whether it should stop."""


class Batcher(Generic[R]):
    """A bounded queue of requests and the worker that runs them in batches through `run_batch`."""

    def __init__(self, run_batch: Callable[[Sequence[RowRequest]], Sequence[R]], *, max_batch_size: int,
                 batch_window_s: float, max_queue: int, request_timeout_s: float, name: str) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.request_timeout_s = request_timeout_s
        self.name = name
        self._queue: queue.Queue[tuple[RowRequest, Future[R]]] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"{self.name}-batcher", daemon=True)
        self._thread.start()

    def close(self, message: str) -> None:
        """Finish the batch in progress, then fail what still waits with 503 `message`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.request_timeout_s)
        error = RequestError(503, message, retry_after_s=RETRY_AFTER_S)
        while True:
            try:
                _, fut = self._queue.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                fut.set_exception(error)

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def enqueue(self, row: RowRequest) -> Future[R]:
        """Queue one request; its Future holds the result. A full queue is a 503 at once."""
        fut: Future[R] = Future()
        try:
            self._queue.put_nowait((row, fut))
        except queue.Full:
            raise RequestError(503, f"{self.name} busy: {self._queue.maxsize} requests already waiting",
                               retry_after_s=RETRY_AFTER_S) from None
        return fut

    def submit(self, row: RowRequest) -> R:
        """Queue one request and wait for its result (called from threads)."""
        fut = self.enqueue(row)
        try:
            return fut.result(timeout=self.request_timeout_s)
        except TimeoutError:
            fut.cancel()  # still queued: the worker skips it instead of generating for nobody
            raise RequestError(504, f"no answer within {self.request_timeout_s}s") from None

    def _loop(self) -> None:
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
            self._run(batch)

    def _run(self, batch: list[tuple[RowRequest, Future[R]]]) -> None:
        live = [(row, fut) for row, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self.run_batch([row for row, _ in live])
        except Exception as e:  # noqa: BLE001 - handed to the waiting requests, never lost
            if len(live) == 1:
                log.exception("%s: generation failed", self.name)
                live[0][1].set_exception(e)
                return
            log.warning("%s: a batch of %d failed (%s: %s); running its rows one by one", self.name, len(live),
                        type(e).__name__, e)
            for row, fut in live:
                self._run_alone(row, fut)
            return
        for (_, fut), result in zip(live, results):
            fut.set_result(result)

    def _run_alone(self, row: RowRequest, fut: Future[R]) -> None:
        try:
            fut.set_result(self.run_batch([row])[0])
        except Exception as e:  # noqa: BLE001 - this row's own failure, its client's 500
            log.exception("%s: generation failed for one request", self.name)
            fut.set_exception(e)
