"""Who answers chat requests: a model in this process (`LocalEngine`) or an upstream server (`UpstreamEngine`).

The HTTP layer (oel.serving.app) only talks to an engine: `check` a request before any compute,
`submit` it (an awaitable answer, tokens handed to `on_text` as they are sampled when streaming),
`queue_depth` for /metrics. `oel serve` and `oel gateway responder=local` use `LocalEngine`; the
gateway's `responder=upstream` uses `UpstreamEngine`.

`LocalEngine` batches with oel.serving.batcher.Batcher (one worker thread, a bounded queue; a
failing batch is rerun row by row so that a bad request fails alone). Its batch function takes the
(backend, version) pair once per batch, which is what makes a hot swap safe: `swap` only replaces
the pair; the batch in progress finishes on the old weights, later batches run on the new ones.

Prompt length is checked against the model's context BEFORE queueing: a prompt whose tokens plus
max_tokens exceed it is a 400 naming both numbers, instead of minutes of CPU spent on a prompt the
model cannot attend over. The same tokenization rejects text the tokenizer cannot take (400).
Tokenizing costs ~1-7 s per million characters, so the prompt's UTF-8 bytes are checked first: no
token decodes to more bytes than the vocabulary's longest token, so a prompt of more bytes than
`limit x that` is over the limit without tokenizing it (a 1 MB prompt to a 4k-context model is
refused in microseconds). What is tokenized runs on a pool of its own (TOKENIZE_THREADS), never
in the default executor where the store's writes run.

Cancelling the Future `submit` returns cancels the request: still queued, it is skipped; already
generating, its row stops at the next token (oel.backends.hf.RowRequest.cancelled) and its
batch-mates go on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.error
import weakref
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from oel.backends.base import Generation, SamplingParams
from oel.backends.hf import HFBackend, RowRequest
from oel.serving.batcher import Batcher
from oel.serving.protocol import RETRY_AFTER_S, RequestError, bad
from oel.trajectory import Message

log = logging.getLogger(__name__)

UPSTREAM_ERROR_CHARS = 200
"""How much of an upstream error body is quoted in the 502 message."""
TOKENIZE_THREADS = 2
"""Threads tokenizing prompts for the length check (a pool of their own: see the module doc)."""
TextSink = Callable[[str, int], None]
"""Receives each new piece of answer text and the answer's token count so far (called from the
generating thread)."""


@dataclass(frozen=True)
class Answer:
    """One completion and the model version that produced it."""

    generation: Generation
    version: int


class Engine(Protocol):
    """What the HTTP layer needs of whoever answers."""

    @property
    def version(self) -> int: ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def queue_depth(self) -> int: ...

    async def check(self, messages: list[Message], params: SamplingParams) -> int:
        """400 before any compute for a prompt that cannot be served; its token count (0: unknown)."""

    def submit(self, messages: list[Message], params: SamplingParams, body: dict[str, Any],
               on_text: TextSink | None = None) -> asyncio.Future[Answer]: ...


class Detokenizer:
    """Token ids in, new text out: decodes the whole answer so far and hands on what is new.

    Text ending in U+FFFD (a multi-byte character cut between tokens) is held back until the
    next token completes it. A (step, id) already seen is ignored: a batch that failed and is
    rerun row by row replays its tokens.
    """

    def __init__(self, tokenizer: Any, stop_ids: frozenset[int], sink: TextSink) -> None:
        self.tokenizer, self.stop_ids, self.sink = tokenizer, stop_ids, sink
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False

    def __call__(self, step: int, token: int) -> None:
        if step < len(self.ids) or self.stopped:
            return
        if token in self.stop_ids:
            self.stopped = True
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return
        new, self.sent = text[len(self.sent):], text
        if new:
            self.sink(new, len(self.ids))


class LocalEngine:
    """An HFBackend in this process, batched, whose weights can be swapped between batches."""

    def __init__(self, backend: HFBackend, version: int = 0, *, max_batch_size: int, batch_window_s: float,
                 max_queue: int, request_timeout_s: float, max_prompt_tokens: int = 0, name: str = "server") -> None:
        self._current = (backend, version)
        self._swap_lock = threading.Lock()
        self.max_prompt_tokens = max_prompt_tokens
        self.request_timeout_s = request_timeout_s
        self._tokenizing = ThreadPoolExecutor(max_workers=TOKENIZE_THREADS, thread_name_prefix=f"{name}-tokenize")
        self._token_bytes: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self.batcher: Batcher[Answer] = Batcher(self._run_batch, max_batch_size=max_batch_size,
                                                batch_window_s=batch_window_s, max_queue=max_queue,
                                                request_timeout_s=request_timeout_s, name=name)

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

    def close(self, message: str = "server is shutting down") -> None:
        """Finish the batch in progress, then fail what still waits with 503."""
        self.batcher.close(message)
        self._tokenizing.shutdown(wait=False, cancel_futures=True)

    def queue_depth(self) -> int:
        return self.batcher.queue_depth()

    def prompt_limit(self, params: SamplingParams) -> int | None:
        """The most prompt tokens a request with these settings may send (None: no known limit)."""
        context = self.backend.context_tokens
        limits = [n for n in (self.max_prompt_tokens or None,
                              context - params.max_new_tokens if context else None) if n is not None]
        return min(limits) if limits else None

    async def check(self, messages: list[Message], params: SamplingParams) -> int:
        """400 before any compute: text the tokenizer refuses, a prompt over the limit; else its tokens."""
        backend = self.backend
        limit = self.prompt_limit(params)
        loop = asyncio.get_running_loop()
        if limit is not None:
            if backend.tokenizer not in self._token_bytes:  # once per tokenizer: a pass over the vocabulary
                await loop.run_in_executor(self._tokenizing, self._longest_token_bytes, backend)
            self._check_bytes(backend, messages, limit, params)
        try:
            n = len(await loop.run_in_executor(self._tokenizing, backend.encode, messages, params.enable_thinking))
        except (TypeError, ValueError, UnicodeError) as e:
            raise bad("messages", f"cannot be tokenized ({type(e).__name__})") from None
        if limit is not None and n > limit:
            raise bad("messages", f"the prompt is {n} tokens; {self._why(limit, params)} (limit {max(limit, 0)} "
                                  "prompt tokens)")
        return n

    def _check_bytes(self, backend: HFBackend, messages: list[Message], limit: int, params: SamplingParams) -> None:
        """400 for a prompt whose bytes alone prove it over `limit` tokens, without tokenizing it."""
        most = max(limit, 0) * self._longest_token_bytes(backend)
        size = sum(len(m.content.encode("utf-8", "surrogatepass")) for m in messages)
        if size > most:
            raise bad("messages", f"the prompt is {size} bytes, more than {max(limit, 0)} tokens can hold (no token "
                                  f"is longer than {self._longest_token_bytes(backend)} bytes); "
                                  f"{self._why(limit, params)}")

    def _longest_token_bytes(self, backend: HFBackend) -> int:
        """The UTF-8 length of the vocabulary's longest token string: an upper bound on what one token
        decodes to (byte-level and SentencePiece spell one byte with 1-6 characters). Once per backend."""
        tokenizer = backend.tokenizer
        if tokenizer not in self._token_bytes:
            vocab = tokenizer.get_vocab()
            self._token_bytes[tokenizer] = max((len(t.encode("utf-8", "surrogatepass")) for t in vocab), default=1)
        return self._token_bytes[tokenizer]

    def _why(self, limit: int, params: SamplingParams) -> str:
        context = self.backend.context_tokens
        if context and limit == context - params.max_new_tokens:
            return f"with max_tokens {params.max_new_tokens} it exceeds the model's context of {context} tokens"
        return f"over the server's max_prompt_tokens of {self.max_prompt_tokens}"

    def submit(self, messages: list[Message], params: SamplingParams, body: dict[str, Any],
               on_text: TextSink | None = None) -> asyncio.Future[Answer]:
        backend = self.backend
        on_token = Detokenizer(backend.tokenizer, backend.stop_ids, on_text) if on_text is not None else None
        cancelled = threading.Event()
        answer = asyncio.wrap_future(self.batcher.enqueue(RowRequest(messages, params, params.seed, on_token,
                                                                     cancelled=cancelled.is_set)))
        answer.add_done_callback(lambda f: cancelled.set() if f.cancelled() else None)
        return answer

    def _run_batch(self, rows: Sequence[RowRequest]) -> list[Answer]:
        with self._swap_lock:
            backend, version = self._current  # one pair for the whole batch: a swap waits for the next
        return [Answer(gen, version) for gen in backend.generate_rows(rows)]


class UpstreamEngine:
    """Forwards chat requests to an OpenAI-compatible server (vLLM, llama.cpp, `oel serve`).

    Always non-streaming upstream: a streaming client gets the answer as one piece when it is
    complete. Upstream failures are 502s (a 4xx other than 401/403 is passed on). The blocking
    calls run on a pool of their own, `max_in_flight` threads (more requests get 503): slow
    upstream answers never wait in the event loop's default pool, where the store's writes run.
    """

    version = 0

    def __init__(self, base_url: str, *, api_key: str = "", timeout_s: float, max_in_flight: int = 64) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="oel-upstream")

    def start(self) -> None:
        return None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def queue_depth(self) -> int:
        return self._in_flight

    async def check(self, messages: list[Message], params: SamplingParams) -> int:
        return 0  # the upstream knows its own model's limits

    def submit(self, messages: list[Message], params: SamplingParams, body: dict[str, Any],
               on_text: TextSink | None = None) -> asyncio.Future[Answer]:
        if self._in_flight >= self.max_in_flight:
            raise RequestError(503, f"upstream busy: {self.max_in_flight} requests already in flight",
                               retry_after_s=RETRY_AFTER_S)
        forwarded = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        self._in_flight += 1  # counted here, on the loop thread, so the bound holds before the task runs
        return asyncio.ensure_future(self._complete(forwarded, on_text))

    async def _complete(self, body: dict[str, Any], on_text: TextSink | None) -> Answer:
        try:
            reply = await asyncio.get_running_loop().run_in_executor(self._pool, self._post, body)
        finally:
            self._in_flight -= 1
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] or ""
            usage = reply.get("usage") or {}
            gen = Generation(text=text, prompt_tokens=int(usage.get("prompt_tokens", 0)),
                             completion_tokens=int(usage.get("completion_tokens", 0)),
                             finish_reason=choice.get("finish_reason") or "stop")
        except (KeyError, IndexError, TypeError, ValueError):
            raise RequestError(502, "upstream: answer is not an OpenAI chat completion") from None
        if on_text is not None and text:
            on_text(text, gen.completion_tokens)
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
