"""A streamed chat answer (server-sent events, token by token) that ends cleanly however the client goes.

`StreamedChat` is the ASGI response of `stream: true`. While it sends, it watches the
connection: when the client disconnects, or stops reading for `client_timeout_s` (the edge's
write deadline cuts the connection), the generation is cancelled at once (its batch-mates go on)
and, in the gateway, the exchange is recorded as INCOMPLETE with the text the client was sent,
if it was sent any. An answer sent whole is recorded before its final chunk and `[DONE]`, as
before; if the client is lost after that, the stored exchange is marked incomplete.

With tools (`ChatRequest.read_calls`) the answer goes as one piece at the end, once its tool calls
can be read (oel.serving.tools): until then the client is sent nothing of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from oel.serving.edge import ClientGone, ServingState, error_status
from oel.serving.engine import Answer
from oel.serving.protocol import (
    SSE_DONE,
    ChatCompletionChunk,
    ChunkChoice,
    Delta,
    DeltaToolCall,
    FunctionCall,
    RequestError,
    Usage,
    completion_id,
    error_body,
)
from oel.serving.tools import answer_parts

log = logging.getLogger(__name__)

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def disconnected(receive: Receive) -> None:
    """Returns when the client has gone (the request's body already read: nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass


@dataclass
class ChatRequest:
    """One chat request as the routes pass it on: who asks, what, and where it is recorded."""

    client: str
    messages: list[Any]
    params: Any
    body: dict[str, Any]
    session_id: str | None
    prompt_tokens: int
    read_calls: bool = False  # the client sent tools: its answer's tool calls are read out of the text


class StreamedChat:
    """The SSE response of one streamed chat request (see the module doc)."""

    def __init__(self, state: ServingState, chat: ChatRequest, include_usage: bool,
                 record: Callable[[Answer], Awaitable[dict[str, Any]]]) -> None:
        assert state.engine is not None
        self.state, self.chat, self.include_usage, self.record = state, chat, include_usage, record
        self.loop = asyncio.get_running_loop()
        self.pieces: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.arrived = time.monotonic()
        self.answer = state.engine.submit(chat.messages, chat.params, chat.body, self._on_text)
        self.cid, self.created = completion_id(), int(time.time())
        self.sent, self.sent_tokens = "", 0
        self.exchange_id: int | None = None
        self.headers = {"Cache-Control": "no-cache"}
        if chat.session_id is not None:
            self.headers["X-OEL-Session"] = chat.session_id

    def _on_text(self, text: str, tokens: int) -> None:
        self.loop.call_soon_threadsafe(self.pieces.put_nowait, (text, tokens))

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        gone = asyncio.ensure_future(disconnected(receive))
        produce = asyncio.ensure_future(self._produce(send))
        try:
            done, _ = await asyncio.wait({gone, produce}, return_when=asyncio.FIRST_COMPLETED)
            if produce in done:
                produce.result()
            else:
                produce.cancel()
                raise ClientGone("the client disconnected mid-stream")
        except ClientGone:
            self.answer.cancel()
            await self._record_cut()
            raise
        except BaseException:
            self.answer.cancel()  # a failure of ours, or the server shutting down: nobody will read it
            raise
        finally:
            gone.cancel()

    async def _produce(self, send: Send) -> None:
        headers = [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), *headers]})
        await self._send(send, self._chunk(Delta(role="assistant", content="")))
        first = True
        while not (self.answer.done() and self.pieces.empty()):
            getter = asyncio.ensure_future(self.pieces.get())
            try:
                done, _ = await asyncio.wait({getter, self.answer}, timeout=self.state.request_timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():  # no piece yet (or this task is cancelled): stop waiting for one
                    getter.cancel()
            if getter not in done:
                if not done:
                    self.answer.cancel()
                    late = RequestError(504, f"no answer within {self.state.request_timeout_s}s")
                    await self._send(send, _error_event(late), end=True)
                    return
                continue
            if first:
                self.state.metrics.first_token.observe(time.monotonic() - self.arrived)
                first = False
            text, tokens = getter.result()
            if not self.chat.read_calls:
                await self._send(send, self._chunk(Delta(content=text)))
                self.sent, self.sent_tokens = self.sent + text, tokens
        await self._finish(send)

    async def _finish(self, send: Send) -> None:
        """Record the exchange, then the final chunk (finish_reason), the usage and [DONE]."""
        try:
            result = self.answer.result()
            recorded = await self.record(result)
        except Exception as e:  # noqa: BLE001 - the stream's status is sent: the error goes as an event
            err = error_status(e)
            if err.status >= 500 and not isinstance(e, RequestError):
                log.exception("streamed chat completion failed")
            await self._send(send, _error_event(err), end=True)
            return
        self.exchange_id = recorded.get("exchange_id")
        gen = result.generation
        deltas, finish = _closing_deltas(gen, self.sent, self.chat.read_calls)
        for delta in deltas:
            await self._send(send, self._chunk(delta))
        extra = ({"oel_session": recorded["session"], "oel_model_version": result.version} if "session" in recorded
                 else {})
        await self._send(send, self._chunk(Delta(), finish, **extra))
        if self.include_usage:
            await self._send(send, ChatCompletionChunk(id=self.cid, created=self.created, model=self.state.served_name,
                                                       choices=[], usage=Usage.of(gen)).sse())
        await self._send(send, SSE_DONE, end=True)

    async def _send(self, send: Send, data: bytes, end: bool = False) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": not end})

    def _chunk(self, delta: Delta, finish: str | None = None, **extra: Any) -> bytes:
        return ChatCompletionChunk(id=self.cid, created=self.created, model=self.state.served_name,
                                   choices=[ChunkChoice(delta=delta, finish_reason=finish)], **extra).sse()

    async def _record_cut(self) -> None:
        """The client was lost: the stored exchange is marked incomplete, or what it was sent is
        recorded as an incomplete exchange (nothing, if it was sent nothing)."""
        store = self.state.store
        if store is None:
            return
        try:
            if self.exchange_id is not None:
                await asyncio.to_thread(store.mark_incomplete, self.exchange_id)
            elif self.sent:
                c, model_id = self.chat, f"{self.state.served_name}@v{self.state.version}"
                await asyncio.to_thread(store.record_exchange, c.client, c.messages, self.sent,
                                        session_id=c.session_id, model_id=model_id, prompt_tokens=c.prompt_tokens,
                                        response_tokens=self.sent_tokens, complete=False)
        except Exception:  # noqa: BLE001 - nobody is left to answer: logged
            log.exception("recording an incomplete streamed exchange failed")


def _closing_deltas(gen: Any, sent: str, read_calls: bool) -> tuple[list[Delta], str]:
    """What is left to send of a complete answer (its tool calls, with tools), and its finish_reason."""
    if read_calls:
        content, calls, finish = answer_parts(gen.text, gen.finish_reason, True)
        return [Delta(content=content, tool_calls=[
            DeltaToolCall(index=k, id=i, function=FunctionCall(name=c.name, arguments=c.arguments))
            for k, (i, c) in enumerate(calls)] or None)], finish
    if not gen.text.startswith(sent):
        log.warning("streamed text is not a prefix of the final answer (a failed batch rerun alone?)")
        return [], gen.finish_reason
    return ([Delta(content=gen.text[len(sent):])] if len(gen.text) > len(sent) else []), gen.finish_reason


def _error_event(err: RequestError) -> bytes:
    return b"data: " + json.dumps(error_body(err.status, str(err), err.param)).encode() + b"\n\n"
