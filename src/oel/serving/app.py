"""The one HTTP layer of `oel serve` and `oel gateway`: Starlette routes over an engine (and a store).

Routes are thin (vLLM's shape): each validates its body with the pydantic models of
oel.serving.protocol, asks the engine (oel.serving.engine) and, in the gateway, the store, and
answers. What every route shares (routing, keys, rate, body limits and deadline, errors,
counting) is oel.serving.edge.EdgeMiddleware, which runs before any route.

`oel serve` is the mode without a store (`ServingState.store is None`): the same routes, minus
the store's endpoints. With a store every chat exchange is recorded before its answer ends: a
non-streamed answer after the exchange is stored; a streamed one sends its tokens as they are
generated and its final chunk (finish_reason) and `data: [DONE]` only after the exchange is
stored (a failed record ends the stream with an error event instead of [DONE]).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, Router

from oel.serving.edge import EdgeMiddleware, ServingState, error_status
from oel.serving.engine import Answer
from oel.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from oel.serving.protocol import (
    SSE_DONE,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChunkChoice,
    Delta,
    DeltaToolCall,
    FunctionCall,
    ModelCard,
    ModelList,
    RequestError,
    Usage,
    bad,
    completion_id,
    error_body,
    show,
)
from oel.serving.tools import answer_parts, echoed_text
from oel.sessions import AUTO_SESSION_PREFIX, MAX_NAME_CHARS
from oel.sessions import parse_messages as check_prompt

__all__ = ["ServingState", "build_app"]

log = logging.getLogger(__name__)

SESSION_HEADER = "X-OEL-Session"
VERSION_HEADER = "X-OEL-Model-Version"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_END_FIELDS = frozenset({"outcome", "passed", "env_id"})


# ---- routes --------------------------------------------------------------------------------

def build_app(state: ServingState) -> Any:
    """The ASGI app of one server: Starlette routes inside the edge middleware."""
    routes = [Route("/healthz", partial(_healthz, state), methods=["GET"]),
              Route("/metrics", partial(_metrics, state), methods=["GET"]),
              Route("/v1/models", partial(_models, state), methods=["GET"]),
              Route("/v1/chat/completions", partial(_chat, state), methods=["POST"])]
    if state.store is not None:
        routes += [Route("/v1/trajectories", partial(_trajectory, state), methods=["POST"]),
                   Route("/v1/sessions/{session_id:path}/end", partial(_end_session, state), methods=["POST"])]
    # A bare Router, not a Starlette app: exceptions reach EdgeMiddleware, which answers them.
    # Paths differing by a trailing slash are the same endpoint (the middleware matched them).
    inner = Router(routes=routes, redirect_slashes=False)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["path"] = scope["path"].rstrip("/") or "/"
        await inner(scope, receive, send)

    return EdgeMiddleware(app, state)


async def _healthz(state: ServingState, request: Request) -> Response:
    return JSONResponse({"status": "ok", "model_version": state.version})


async def _metrics(state: ServingState, request: Request) -> Response:
    text = await asyncio.to_thread(state.metrics.render)  # reads the store's counters
    return Response(text, media_type=METRICS_CONTENT_TYPE)


async def _models(state: ServingState, request: Request) -> Response:
    version = state.version if state.store is not None else None
    body = ModelList(data=[ModelCard(id=state.served_name, oel_model_version=version)])
    headers = {VERSION_HEADER: str(state.version)} if state.store is not None else {}
    return Response(body.model_dump_json(exclude_none=True), media_type="application/json", headers=headers)


def session_header(value: str | None) -> str | None:
    """The client's session id, checked before any generation is spent on the request."""
    if value is None:
        return None
    if not value or len(value) > MAX_NAME_CHARS:
        raise RequestError(400, f"{SESSION_HEADER}: expected 1..{MAX_NAME_CHARS} characters", param=SESSION_HEADER)
    if value.startswith(AUTO_SESSION_PREFIX):
        raise RequestError(400, f"{SESSION_HEADER}: ids starting with '{AUTO_SESSION_PREFIX}' name stitched sessions "
                           "and are chosen by the gateway", param=SESSION_HEADER)
    return value


async def _chat(state: ServingState, request: Request) -> Response:
    body = request.scope["state"]["body"]
    req = ChatCompletionRequest.parse(body, state.max_tokens_limit)
    messages, params = req.chat(), req.sampling(state.max_tokens_limit)
    session_id = None
    if state.store is not None:
        try:
            check_prompt(messages)
        except ValueError as e:
            raise RequestError(400, str(e), param="messages") from None
        session_id = session_header(request.scope["state"]["headers"].get(SESSION_HEADER.lower()))
    if state.engine is None:
        raise RequestError(404, "chat: this gateway takes trajectories only (responder=none)")
    await state.engine.check(messages, params)
    client = request.scope["state"]["client"]
    if req.stream:
        return _stream(state, client, messages, params, body, session_id, req.include_usage, req.reads_tool_calls)
    try:
        answer = await asyncio.wait_for(state.engine.submit(messages, params, body), state.request_timeout_s)
    except TimeoutError:
        raise RequestError(504, f"no answer within {state.request_timeout_s}s") from None
    headers = await _record(state, client, messages, answer, session_id, req.reads_tool_calls)
    out = ChatCompletionResponse.of(answer.generation, state.served_name, completion_id(),
                                    tool_calls=req.reads_tool_calls)
    return Response(out.model_dump_json(), media_type="application/json", headers=headers)


async def _record(state: ServingState, client: str, messages: list[Any], answer: Answer,
                  session_id: str | None, read_calls: bool = False) -> dict[str, str]:
    """Store the exchange (gateway mode) before its answer is complete; its headers. With tools, the answer is
    stored as the client will send it back (its calls re-rendered), so that the next request stitches to it."""
    if state.store is None:
        return {}
    gen = answer.generation
    recorded = await asyncio.to_thread(
        state.store.record_exchange, client, messages, echoed_text(gen.text, read_calls), session_id=session_id,
        model_id=f"{state.served_name}@v{answer.version}", prompt_tokens=gen.prompt_tokens,
        response_tokens=gen.completion_tokens)
    return {SESSION_HEADER: recorded.session_id, VERSION_HEADER: str(answer.version)}


def _stream(state: ServingState, client: str, messages: list[Any], params: Any, body: dict[str, Any],
            session_id: str | None, include_usage: bool, read_calls: bool = False) -> StreamingResponse:
    """Server-sent events, token by token as the engine samples them (the request is queued now); with
    tools (`read_calls`) the answer goes as one piece at the end, once its tool calls can be read."""
    assert state.engine is not None
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str] = asyncio.Queue()
    arrived = time.monotonic()
    answer = state.engine.submit(messages, params, body,
                                 lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text))
    cid, created = completion_id(), int(time.time())

    def chunk(delta: Delta, finish: str | None = None, **extra: Any) -> bytes:
        return ChatCompletionChunk(id=cid, created=created, model=state.served_name,
                                   choices=[ChunkChoice(delta=delta, finish_reason=finish)], **extra).sse()

    async def events() -> AsyncIterator[bytes]:
        yield chunk(Delta(role="assistant", content=""))
        sent, first = "", True
        while not (answer.done() and pieces.empty()):
            getter = asyncio.ensure_future(pieces.get())
            done, _ = await asyncio.wait({getter, answer}, timeout=state.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if not done:
                    yield _error_event(RequestError(504, f"no answer within {state.request_timeout_s}s"))
                    return
                continue
            if first:
                state.metrics.first_token.observe(time.monotonic() - arrived)
                first = False
            if not read_calls:
                sent += getter.result()
                yield chunk(Delta(content=getter.result()))
        try:
            result = answer.result()
            headers = await _record(state, client, messages, result, session_id, read_calls)
        except Exception as e:  # noqa: BLE001 - the stream's status is sent: the error goes as an event
            err = error_status(e)
            if err.status >= 500 and not isinstance(e, RequestError):
                log.exception("streamed chat completion failed")
            yield _error_event(err)
            return
        gen = result.generation
        deltas, finish = _closing_deltas(gen, sent, read_calls)
        for delta in deltas:
            yield chunk(delta)
        recorded = {"oel_session": headers[SESSION_HEADER], "oel_model_version": result.version} if headers else {}
        yield chunk(Delta(), finish, **recorded)
        if include_usage:
            yield ChatCompletionChunk(id=cid, created=created, model=state.served_name, choices=[],
                                      usage=Usage.of(gen)).sse()
        yield SSE_DONE

    headers = {"Cache-Control": "no-cache"}
    if session_id is not None:
        headers[SESSION_HEADER] = session_id
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


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


async def _trajectory(state: ServingState, request: Request) -> Response:
    assert state.store is not None
    s = request.scope["state"]
    added = await asyncio.to_thread(state.store.add_trajectory, s["client"], s["body"],
                                    idempotency_key=s["headers"].get(IDEMPOTENCY_HEADER.lower()))
    return JSONResponse({"id": added.trajectory_id, "duplicate": added.duplicate},
                        status_code=200 if added.duplicate else 201)


async def _end_session(state: ServingState, request: Request) -> Response:
    assert state.store is not None
    s = request.scope["state"]
    body = s["body"]
    extra = sorted(set(body) - _END_FIELDS)
    if extra:
        raise bad(extra[0], f"unknown field (a session end has {', '.join(sorted(_END_FIELDS))})")
    if not isinstance(body.get("outcome"), str):
        raise bad("outcome", f"expected a string, got {show(body.get('outcome'))}")
    kwargs = {"env_id": body["env_id"]} if body.get("env_id") is not None else {}
    session_id = s["session_id"]  # from the raw path (EdgeMiddleware): an encoded '/' stays in the id
    added = await asyncio.to_thread(state.store.end_session, s["client"], session_id, body["outcome"],
                                    body.get("passed"), **kwargs)
    return JSONResponse({"id": added.trajectory_id, "duplicate": added.duplicate},
                        status_code=200 if added.duplicate else 201)
