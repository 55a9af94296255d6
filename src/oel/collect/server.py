"""A small OpenAI-compatible chat server over the in-process HF backend (`oel serve`).

It lets users serve a consolidated checkpoint to anything that speaks the OpenAI chat API,
and it gives the endpoint backend a REAL server to be tested against. It implements
`GET /v1/models` and non-streaming `POST /v1/chat/completions` (n = 1), with the
extensions vLLM and llama.cpp accept: `top_k` and `chat_template_kwargs.enable_thinking`.

Concurrent requests are batched: handler threads put their request on a queue, and one
worker thread takes whatever arrived within `batch_window_s` (up to `max_batch_size`) and
generates it in one padded batch. Sampling is per-row seeded, so a request's answer does
not depend on what it was batched with. Requests are bounded (body size, max_tokens,
queue length) and the server binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import signal
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError

from oel.config import cfg
from oel.models import ModelConfig
from oel.collect.backends.base import Generation, SamplingParams
from oel.collect.backends.hf import HFBackend, RowRequest
from oel.trajectory import Message

log = logging.getLogger(__name__)

_QUEUE_POLL_S = 0.2
"""How often the idle batch worker checks whether the server is shutting down."""
_SEED_RANGE = 2**31
"""Requests without a seed get a random one in [0, 2**31), like the seeds clients send."""


@dataclass
class ServeConfig:
    """`oel serve`: which model to serve and the server's limits."""

    model: ModelConfig = cfg(factory=ModelConfig, help="the model to serve (preset, .gguf, or HF directory)")
    host: str = cfg("127.0.0.1", "address to bind; keep 127.0.0.1 unless you mean to expose the model")
    port: int = cfg(8000, "TCP port; 0 picks a free one (printed at start)")
    served_name: str = cfg("", "model name clients use in requests; empty = the model's id")
    max_batch_size: int = cfg(16, "most requests generated together in one batch")
    max_batch_tokens: int = cfg(32_768, "most padded prompt tokens in one forward pass (a batch is split beyond it)")
    batch_window_s: float = cfg(0.02, "how long the first request waits for others to batch with it")
    max_tokens_limit: int = cfg(1024, "largest max_tokens a request may ask for")
    max_body_bytes: int = cfg(1 << 20, "largest request body accepted, in bytes")
    max_queue: int = cfg(256, "requests waiting at once; more get HTTP 503")
    request_timeout_s: float = cfg(600.0, "a request still unanswered after this long gets HTTP 504")

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_batch_tokens", "max_tokens_limit", "max_body_bytes", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.port < 2**16:
            raise ValueError(f"port: must be in 0..65535, got {self.port}")


class RequestError(Exception):
    """A client error: becomes an OpenAI-style error body with this HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_chat_request(body: dict[str, Any], max_tokens_limit: int) -> tuple[list[Message], SamplingParams]:
    """Validate an OpenAI chat request body; RequestError(400) names the bad field."""
    if body.get("stream"):
        raise RequestError(400, "stream: streaming is not supported by oel serve")
    if body.get("n", 1) != 1:
        raise RequestError(400, f"n: only n=1 is supported, got {body.get('n')!r}")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "messages: expected a non-empty list of {role, content}")
    try:
        messages = [Message.model_validate(m) for m in raw]
    except ValidationError as e:
        raise RequestError(400, f"messages: {e.errors()[0]['msg']}") from None
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or SamplingParams().max_new_tokens
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= max_tokens_limit:
        raise RequestError(400, f"max_tokens: must be an integer in 1..{max_tokens_limit}, got {max_tokens!r}")
    thinking = (body.get("chat_template_kwargs") or {}).get("enable_thinking", False)
    seed = body.get("seed")
    try:
        params = SamplingParams(
            temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
            top_k=int(body.get("top_k") or 0), max_new_tokens=max_tokens,
            seed=int(seed) if seed is not None else secrets.randbelow(_SEED_RANGE),
            enable_thinking=bool(thinking),
        )
    except (TypeError, ValueError) as e:
        raise RequestError(400, str(e)) from None
    return messages, params


def completion_body(gen: Generation, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                     "finish_reason": gen.finish_reason}],
        "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                  "total_tokens": gen.prompt_tokens + gen.completion_tokens},
    }


class ChatServer:
    """Serves an HFBackend over HTTP; `start()` returns at once, `close()` stops everything."""

    def __init__(self, backend: HFBackend, config: ServeConfig) -> None:
        self.backend = backend
        self.config = config
        self.served_name = config.served_name or backend.model_id
        self._queue: queue.Queue[tuple[RowRequest, Future[Generation]]] = queue.Queue(maxsize=config.max_queue)
        self._stop = threading.Event()
        self.httpd = ThreadingHTTPServer((config.host, config.port), _make_handler(self))
        self.httpd.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "ChatServer":
        for target, name in ((self.httpd.serve_forever, "oel-http"), (self._batch_loop, "oel-batcher")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("serving %s at %s", self.served_name, self.url)
        return self

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for t in self._threads:
            t.join(timeout=self.config.request_timeout_s)

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, messages: list[Message], params: SamplingParams) -> Generation:
        """Queue one request and wait for its completion (called from handler threads)."""
        fut: Future[Generation] = Future()
        try:
            self._queue.put_nowait((RowRequest(messages, params, params.seed), fut))
        except queue.Full:
            raise RequestError(503, f"server busy: {self.config.max_queue} requests already waiting") from None
        try:
            return fut.result(timeout=self.config.request_timeout_s)
        except TimeoutError:
            raise RequestError(504, f"no answer within {self.config.request_timeout_s}s") from None

    def _batch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=_QUEUE_POLL_S)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.config.batch_window_s
            while len(batch) < self.config.max_batch_size:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[RowRequest, Future[Generation]]]) -> None:
        try:
            gens = self.backend.generate_rows([row for row, _ in batch])
        except Exception as e:  # noqa: BLE001 - handed to each waiting request, never lost
            log.exception("generation failed for a batch of %d", len(batch))
            for _, fut in batch:
                fut.set_exception(e)
            return
        for (_, fut), gen in zip(batch, gens):
            fut.set_result(gen)


def _make_handler(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # route access logs to logging
            log.debug("%s " + format, self.client_address[0], *args)

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/v1/models":
                return self._error(404, f"{self.path}: not found (try /v1/models or /v1/chat/completions)")
            self._send(200, {"object": "list", "data": [
                {"id": server.served_name, "object": "model", "created": 0, "owned_by": "oel"}]})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, f"{self.path}: not found (POST /v1/chat/completions)")
            try:
                body = self._read_json()
                messages, params = parse_chat_request(body, server.config.max_tokens_limit)
                gen = server.submit(messages, params)
            except RequestError as e:
                return self._error(e.status, str(e))
            except Exception as e:  # noqa: BLE001 - the client gets a 500, the log the traceback
                log.exception("chat completion failed")
                return self._error(500, f"{type(e).__name__}: {e}")
            self._send(200, completion_body(gen, server.served_name))

        def _read_json(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            if length > server.config.max_body_bytes:
                raise RequestError(413, f"request body of {length} bytes exceeds {server.config.max_body_bytes}")
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError as e:
                raise RequestError(400, f"body is not valid JSON ({e.msg})") from None
            if not isinstance(body, dict):
                raise RequestError(400, "body must be a JSON object")
            return body

        def _error(self, status: int, message: str) -> None:
            # The body may be unread (404, 413): close, or its bytes would parse as the next request.
            self.close_connection = True
            self._send(status, {"error": {"message": message, "type": "invalid_request_error"
                                          if status < 500 else "server_error", "code": status}})

        def _send(self, status: int, obj: dict[str, Any]) -> None:
            data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

    return Handler


def serve(config: ServeConfig) -> None:
    """Load the model and serve until interrupted (the `oel serve` command)."""
    backend = HFBackend.from_model_config(config.model, max_batch_size=config.max_batch_size,
                                          max_batch_tokens=config.max_batch_tokens)
    server = ChatServer(backend, config).start()
    # SIGTERM (service managers, `kill`) stops it as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    print(f"oel serve: {server.served_name} at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(1)
    finally:
        server.close()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
