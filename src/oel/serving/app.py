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

A client that disconnects before its answer is complete gets its generation cancelled
(oel.serving.streaming for streams): a non-streamed answer is then neither generated to the
end nor recorded; a cut stream is recorded as an incomplete exchange of what it was sent.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from oel.serving.edge import ClientGone, EdgeMiddleware, ServingState
from oel.serving.engine import Answer
from oel.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from oel.serving.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ModelCard,
    ModelList,
    RequestError,
    bad,
    completion_id,
    show,
)
from oel.serving.streaming import ChatRequest, StreamedChat, disconnected
from oel.serving.tools import echoed_text
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


async def _chat(state: ServingState, request: Request) -> Any:
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
    prompt_tokens = await state.engine.check(messages, params)
    chat = ChatRequest(request.scope["state"]["client"], messages, params, body, session_id, prompt_tokens,
                       req.reads_tool_calls)
    record = partial(_record, state, chat)
    if req.stream:
        return StreamedChat(state, chat, req.include_usage, record)
    answer = await _answer_unless_gone(state.engine.submit(messages, params, body), request.receive,
                                       state.request_timeout_s)
    recorded = await record(answer)
    headers = {SESSION_HEADER: recorded["session"], VERSION_HEADER: str(answer.version)} if recorded else {}
    out = ChatCompletionResponse.of(answer.generation, state.served_name, completion_id(),
                                    tool_calls=req.reads_tool_calls)
    response = Response(out.model_dump_json(), media_type="application/json", headers=headers)
    return RecordedAnswer(response, state, recorded.get("exchange_id"))


async def _answer_unless_gone(answer: asyncio.Future[Answer], receive: Any, timeout_s: float) -> Answer:
    """The engine's answer; its generation is cancelled when the client disconnects first (or at the
    request timeout: 504), so that nobody's compute goes to a client that has gone."""
    gone = asyncio.ensure_future(disconnected(receive))
    try:
        done, _ = await asyncio.wait({answer, gone}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        answer.cancel()  # the server is shutting down
        raise
    finally:
        gone.cancel()
    if answer in done:
        return answer.result()
    answer.cancel()
    if gone in done:
        raise ClientGone("the client disconnected before its answer")
    raise RequestError(504, f"no answer within {timeout_s}s")


async def _record(state: ServingState, chat: ChatRequest, answer: Answer) -> dict[str, Any]:
    """Store the exchange (gateway mode) before its answer is complete: its session and row. With tools, the
    answer is stored as the client will send it back (its calls re-rendered), so that the next request stitches
    to it."""
    if state.store is None:
        return {}
    gen = answer.generation
    recorded = await asyncio.to_thread(
        state.store.record_exchange, chat.client, chat.messages, echoed_text(gen.text, chat.read_calls),
        session_id=chat.session_id,
        model_id=f"{state.served_name}@v{answer.version}", prompt_tokens=gen.prompt_tokens,
        response_tokens=gen.completion_tokens)
    return {"session": recorded.session_id, "exchange_id": recorded.exchange_id}


class RecordedAnswer:
    """A non-streamed answer whose stored exchange is marked incomplete if the client is lost while
    it is sent (it stopped reading: the edge's write deadline)."""

    def __init__(self, response: Response, state: ServingState, exchange_id: int | None) -> None:
        self.response, self.state, self.exchange_id = response, state, exchange_id

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await self.response(scope, receive, send)
        except ClientGone:
            if self.state.store is not None and self.exchange_id is not None:
                await asyncio.to_thread(self.state.store.mark_incomplete, self.exchange_id)
            raise


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
