"""The OpenAI chat-completions wire format as pydantic models, and the error every bad field becomes.

One module for what crosses the wire, as in vLLM's `entrypoints/openai/protocol.py`: the request
body (`ChatCompletionRequest`), the answers (`ChatCompletionResponse`, the streamed
`ChatCompletionChunk`, `ModelList`) and the OpenAI error shape. Both `oel serve` and
`oel gateway` use these and nothing else.

Validation is strict, as JSON gives the values: a boolean is not an integer (`True` would
otherwise pass as 1), `5.0` is not a token count, NaN and infinite numbers (Python's JSON
reader accepts `NaN` and `1e999`) are refused. Every failure is a `RequestError(400)` whose
message starts with the field's dotted name and whose `error.param` is that name. Absent and
`null` fields take the OpenAI API's defaults (temperature 1, top_p 1). Fields that would change
the answer but are not implemented (`stop`, `logprobs`, penalties, ...) are refused
unless they hold their neutral value: silently ignoring them would return something the client
did not ask for. Other unknown fields (`user`, `metadata`, ...) are ignored. Tools and tool messages
are served as text the model reads and writes (oel.serving.tools).
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from oel.backends.base import Generation, SamplingParams
from oel.serving.tools import answer_parts, prompt_messages
from oel.trajectory import Message
from oel.validation import error_text, location

RETRY_AFTER_S = 1
"""What an overloaded server tells clients to wait before retrying (the Retry-After header)."""
MAX_JSON_DEPTH = 64
"""The deepest nesting of arrays and objects a body may have. pydantic serializes at most ~255
levels (a trajectory whose `meta` nested 300 deep was stored as a 500), and no request needs more
than a handful."""
MAX_TEMPERATURE = 2.0
SEED_LIMIT = 2**64
"""torch.Generator.manual_seed takes seeds in [0, 2**64)."""
RANDOM_SEED_RANGE = 2**31
"""Requests without a seed get a random one in [0, 2**31), like the seeds clients send."""
_SHOWN_CHARS = 40
"""A client's bad value is echoed in error messages cut to this many characters."""
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "stop": (None, "", []), "functions": (None, []), "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}), "logprobs": (None, False),
    "top_logprobs": (None, 0), "logit_bias": (None, {}), "frequency_penalty": (None, 0), "presence_penalty": (None, 0),
}
"""Known OpenAI fields not implemented here, with the values that mean 'not used'."""


class RequestError(Exception):
    """A client error: becomes an OpenAI-style error body with this HTTP status.

    `param` names the offending request field (OpenAI's `error.param`); `retry_after_s`
    adds a Retry-After header (overload answers).
    """

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.retry_after_s = retry_after_s


def show(value: Any) -> str:
    """repr(value), cut: error messages name the bad value without echoing a whole body."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def bad(param: str, message: str) -> RequestError:
    """A 400 whose message starts with the field's name and whose `param` is that name."""
    return RequestError(400, f"{param}: {message}", param=param)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape: {"error": {message, type, param, code}}."""
    kind = {401: "authentication_error"}.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def json_object(data: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object of valid Unicode text, nested at most MAX_JSON_DEPTH
    deep; else a 400 naming the place.

    A lone surrogate (`"\\ud800"`) is valid JSON but no text: it would fail later, in the
    tokenizer or the store's UTF-8 encoding, as a 500 (and fail a whole batch with it).
    """
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, 4300+ digit integers, deep nesting
        raise RequestError(400, f"body: not valid JSON ({getattr(e, 'msg', type(e).__name__)})") from None
    if not isinstance(body, dict):
        raise RequestError(400, "body: must be a JSON object")
    where = _first_bad_value(body, "", 1)
    if where is not None:
        path, why = where
        raise bad(path or "body", why)
    return body


SURROGATE = "holds a lone surrogate (\\ud800-\\udfff): not valid Unicode text"


def _first_bad_value(value: Any, path: str, depth: int) -> tuple[str, str] | None:
    """(dotted path, why) of the first string (value or key) UTF-8 cannot encode, or of the first
    container nested deeper than MAX_JSON_DEPTH; else None."""
    if isinstance(value, str):
        return None if value.isascii() or _encodes(value) else (path, SURROGATE)
    if isinstance(value, (dict, list)) and depth > MAX_JSON_DEPTH:
        return _top(path), f"nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects"
    if isinstance(value, dict):
        for k, v in value.items():
            if not _encodes(k):
                return path or "body", SURROGATE
            found = _first_bad_value(v, f"{path}.{k}" if path else str(k), depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _first_bad_value(v, f"{path}[{i}]", depth + 1)
            if found is not None:
                return found
    return None


def _top(path: str) -> str:
    """The body's top-level field of a dotted path (a deep path would be as long as the nesting)."""
    return path.split(".", 1)[0].split("[", 1)[0]


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# ---- the request -----------------------------------------------------------------------------

class TextPart(BaseModel):
    """One part of OpenAI's list form of a message's content; only text parts are served."""

    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    name: str
    arguments: str


class RequestToolCall(BaseModel):
    """An earlier answer's tool call, as the client sends it back in the history."""

    model_config = ConfigDict(extra="ignore", strict=True)

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """{role, content}; content a string or a list of text parts (joined). An assistant message may carry
    `tool_calls` (content then may be null), a tool message its `tool_call_id`. Other keys must be null."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[RequestToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _no_extra(self) -> ChatMessage:
        extra = sorted(k for k, v in (self.model_extra or {}).items() if v is not None)
        if extra:
            raise ValueError(f"{extra[0]}\0not supported (a message has role and content)")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool | None = None


class ChatTemplateKwargs(BaseModel):
    """vLLM's extension; only enable_thinking is read, the other template kwargs are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    enable_thinking: bool | None = None


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: str


class ToolSpec(BaseModel):
    """A tool the model may call (OpenAI's `tools[]`); shown to the model in its system prompt."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["function"]
    function: FunctionSpec


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["function"]
    function: FunctionSpec


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions, with the extensions vLLM and llama.cpp accept (top_k, enable_thinking)."""

    model_config = ConfigDict(extra="allow", strict=True)

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0, le=SEED_LIMIT - 1)
    n: int | None = Field(None, ge=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise ValueError(f"only n=1 is supported, got {n}")
        return n

    @model_validator(mode="after")
    def _neutral_unsupported(self) -> ChatCompletionRequest:
        for name, neutral in _UNSUPPORTED.items():
            extra = self.model_extra or {}
            if name in extra and not any(_same(extra[name], v) for v in neutral):
                raise ValueError(f"{name}\0not supported (leave it out)")
        if (self.max_tokens is not None and self.max_completion_tokens is not None
                and self.max_tokens != self.max_completion_tokens):
            raise ValueError(f"max_tokens\0differs from max_completion_tokens ({self.max_tokens} vs "
                             f"{self.max_completion_tokens}); send one of them")
        return self

    @classmethod
    def parse(cls, body: dict[str, Any], max_tokens_limit: int) -> ChatCompletionRequest:
        """Validate a JSON body; RequestError(400) names the first bad field."""
        try:
            request = cls.model_validate(body)
        except ValidationError as e:
            raise _as_request_error(e) from None
        for name in ("max_completion_tokens", "max_tokens"):
            value = getattr(request, name)
            if value is not None and value > max_tokens_limit:
                raise bad(name, f"must be in 1..{max_tokens_limit}, got {value}")
        return request

    def chat(self) -> list[Message]:
        """The prompt in the three roles the model reads (tool calls and results as text: oel.tool_text)."""
        return prompt_messages(self.messages, self.tools)

    @property
    def reads_tool_calls(self) -> bool:
        """Whether `<tool_call>` blocks in the answer are returned as `tool_calls` (tools given, not 'none')."""
        return bool(self.tools) and self.tool_choice != "none"

    def sampling(self, max_tokens_limit: int) -> SamplingParams:
        """The sampling settings; absent fields take OpenAI's defaults, max tokens the server's cut default."""
        chosen = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        kwargs = self.chat_template_kwargs
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            max_new_tokens=chosen if chosen is not None else min(SamplingParams().max_new_tokens, max_tokens_limit),
            seed=self.seed if self.seed is not None else secrets.randbelow(RANDOM_SEED_RANGE),
            enable_thinking=bool(kwargs and kwargs.enable_thinking),
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def parse_chat_request(body: dict[str, Any], max_tokens_limit: int) -> tuple[list[Message], SamplingParams]:
    """(messages, sampling) of a chat request body; RequestError(400) names the bad field."""
    request = ChatCompletionRequest.parse(body, max_tokens_limit)
    return request.chat(), request.sampling(max_tokens_limit)


def _same(value: Any, neutral: Any) -> bool:
    """JSON equality: 0 and 0.0 are the same, True and 1 are not."""
    if neutral is None or isinstance(neutral, bool) or isinstance(value, bool):
        return value is neutral
    if isinstance(neutral, (int, float)):
        return isinstance(value, (int, float)) and value == neutral
    return type(value) is type(neutral) and value == neutral


def _as_request_error(e: ValidationError) -> RequestError:
    """The first error as `field.path: what was wrong, got <value>` (param = the path)."""
    errors = e.errors(include_url=False)
    first = _loc_path(errors[0]["loc"])
    # Of a union's branches (content: str | list of parts), the one that got deepest says most.
    err = max((x for x in errors if _loc_path(x["loc"]).startswith(first)), key=lambda x: len(x["loc"]))
    path = _loc_path(err["loc"])
    message = error_text(err)
    if "\0" in message:  # a model validator naming a field of its own: "field\0message"
        field, message = message.split("\0", 1)
        path = f"{path}.{field}" if path else field
    got = err.get("input")
    suffix = "" if err["type"] in ("value_error", "missing") or isinstance(got, (dict, list)) else f", got {show(got)}"
    if err["type"] == "missing":
        message = "required"
    return bad(path or "body", message + suffix)


UNION_TAGS = ("str", "list[TextPart]")
"""The branch tags pydantic puts in an error's location for `content: str | list[TextPart]`: not fields."""


def _loc_path(loc: tuple[int | str, ...]) -> str:
    """('messages', 0, 'role') -> 'messages[0].role'."""
    return location(loc, skip=UNION_TAGS)


# ---- the answers ----------------------------------------------------------------------------

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, gen: Generation) -> Usage:
        return cls(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                   total_tokens=gen.prompt_tokens + gen.completion_tokens)


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ResponseToolCall] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage

    @classmethod
    def of(cls, gen: Generation, model: str, cid: str, *, tool_calls: bool = False) -> ChatCompletionResponse:
        """The answer; with `tool_calls`, the `<tool_call>` blocks of its text become OpenAI tool calls."""
        content, calls, finish = answer_parts(gen.text, gen.finish_reason, tool_calls)
        tool_calls = [ResponseToolCall(id=i, function=FunctionCall(name=c.name, arguments=c.arguments))
                      for i, c in calls]
        message = AssistantMessage(content=content, tool_calls=tool_calls or None)
        return cls(id=cid, model=model, usage=Usage.of(gen), choices=[Choice(message=message, finish_reason=finish)])


class DeltaToolCall(BaseModel):
    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    oel_session: str | None = None
    """The gateway's session of a streamed exchange, on its final chunk (the headers went out before
    a stitched session was known); OpenAI clients ignore the field."""
    oel_model_version: int | None = None

    def sse(self) -> bytes:
        """One server-sent event (unset fields left out, as OpenAI does)."""
        return b"data: " + self.model_dump_json(exclude_none=True).encode("utf-8") + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "oel"
    oel_model_version: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"
