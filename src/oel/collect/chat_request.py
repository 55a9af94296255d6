"""Validating an OpenAI chat-completions request body: every bad field is a 400 that names it.

A pure function, `parse_chat_request(body, max_tokens_limit)`, so that every rule is tested
without a server. Types are checked strictly, as JSON gives them: a boolean is not an
integer (`True` would otherwise pass as 1), `5.0` is not a token count, and NaN or
infinite numbers (Python's JSON reader accepts `NaN` and `1e999`) are refused. Absent and
`null` fields take their defaults, which are the OpenAI API's (temperature 1, top_p 1).

Fields that would change the answer but that this server does not implement (`stop`,
`tools`, `logprobs`, penalties, ...) are refused unless they hold their neutral value:
silently ignoring them would return something the client did not ask for. Other unknown
fields (`user`, `metadata`, ...) are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from oel.collect.backends.base import SamplingParams
from oel.collect.http_limits import RequestError, show
from oel.trajectory import Message

ROLES = ("system", "user", "assistant")
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
MAX_TEMPERATURE = 2.0
"""The OpenAI API's upper bound on temperature."""
SEED_LIMIT = 2**64
"""torch.Generator.manual_seed takes seeds in [0, 2**64)."""
RANDOM_SEED_RANGE = 2**31
"""Requests without a seed get a random one in [0, 2**31), like the seeds clients send."""
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "stop": (None, "", []), "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []),
    "function_call": (None, "none"), "response_format": (None, {"type": "text"}), "logprobs": (None, False),
    "top_logprobs": (None, 0), "logit_bias": (None, {}), "frequency_penalty": (None, 0), "presence_penalty": (None, 0),
}
"""Known OpenAI fields this server does not implement, with the values that mean 'not used'."""
_MESSAGE_FIELDS = frozenset({"role", "content"})


def bad(param: str, message: str) -> RequestError:
    """A 400 whose message starts with the field's name and whose `param` is that name."""
    return RequestError(400, f"{param}: {message}", param=param)


def parse_chat_request(body: dict[str, Any], max_tokens_limit: int) -> tuple[list[Message], SamplingParams]:
    """Validate an OpenAI chat request body; RequestError(400) names the bad field."""
    _check_request_shape(body)
    messages = parse_messages(body.get("messages"))
    seed = integer_field(body, "seed", lo=0, hi=SEED_LIMIT - 1)
    params = SamplingParams(
        temperature=number_field(body, "temperature", DEFAULT_TEMPERATURE, lo=0.0, hi=MAX_TEMPERATURE),
        top_p=number_field(body, "top_p", DEFAULT_TOP_P, lo=0.0, hi=1.0, lo_open=True),
        top_k=integer_field(body, "top_k", 0, lo=0),
        max_new_tokens=max_tokens_field(body, max_tokens_limit),
        seed=seed if seed is not None else secrets.randbelow(RANDOM_SEED_RANGE),
        enable_thinking=thinking_field(body),
    )
    return messages, params


def _check_request_shape(body: dict[str, Any]) -> None:
    """stream, n, model and the unimplemented fields."""
    if bool_field(body, "stream"):
        raise bad("stream", "streaming is not supported by oel serve; send stream=false")
    n = integer_field(body, "n", 1, lo=1)
    if n != 1:
        raise bad("n", f"only n=1 is supported, got {n}")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise bad("model", f"expected a string, got {show(body['model'])}")
    for name, neutral in _UNSUPPORTED.items():
        if name in body and not any(_same(body[name], v) for v in neutral):
            raise bad(name, "not supported by oel serve (leave it out)")


def _same(value: Any, neutral: Any) -> bool:
    """JSON equality: 0 and 0.0 are the same, True and 1 are not."""
    if neutral is None or isinstance(neutral, bool) or isinstance(value, bool):
        return value is neutral
    if _is_number(neutral):
        return _is_number(value) and value == neutral
    return type(value) is type(neutral) and value == neutral


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer_field(body: dict[str, Any], name: str, default: int | None = None, *,
                  lo: int | None = None, hi: int | None = None) -> int | None:
    """An integer field within [lo, hi]; absent or null -> default."""
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value):
        raise bad(name, f"expected an integer, got {show(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise bad(name, f"must be in {_range(lo, hi)}, got {show(value)}")
    return value


def number_field(body: dict[str, Any], name: str, default: float, *, lo: float, hi: float,
                 lo_open: bool = False) -> float:
    """A finite number in [lo, hi] (or (lo, hi] with lo_open); absent or null -> default."""
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value) or not math.isfinite(value):
        raise bad(name, f"expected a finite number, got {show(value)}")
    if value > hi or value < lo or (lo_open and value == lo):
        raise bad(name, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {show(value)}")
    return float(value)


def bool_field(body: dict[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(name, f"expected true or false, got {show(value)}")
    return value


def _range(lo: int | None, hi: int | None) -> str:
    return f"{'' if lo is None else lo}..{'' if hi is None else hi}"


def max_tokens_field(body: dict[str, Any], limit: int) -> int:
    """max_completion_tokens (the current name) or max_tokens (the old one), 1..limit.

    Neither given: the sampling default, cut to the server's limit.
    """
    new = integer_field(body, "max_completion_tokens", lo=1, hi=limit)
    old = integer_field(body, "max_tokens", lo=1, hi=limit)
    if new is not None and old is not None and new != old:
        raise bad("max_tokens", f"differs from max_completion_tokens ({old} vs {new}); send one of them")
    chosen = new if new is not None else old
    return chosen if chosen is not None else min(SamplingParams().max_new_tokens, limit)


def thinking_field(body: dict[str, Any]) -> bool:
    """chat_template_kwargs.enable_thinking (vLLM's extension); the other template kwargs are ignored."""
    kwargs = body.get("chat_template_kwargs")
    if kwargs is None:
        return False
    if not isinstance(kwargs, dict):
        raise bad("chat_template_kwargs", f"expected an object, got {show(kwargs)}")
    value = kwargs.get("enable_thinking")
    if value is not None and not isinstance(value, bool):
        raise bad("chat_template_kwargs.enable_thinking", f"expected true or false, got {show(value)}")
    return bool(value)


def parse_messages(raw: Any) -> list[Message]:
    """A non-empty list of {role, content}; content a string or a list of text parts."""
    if not isinstance(raw, list) or not raw:
        raise bad("messages", f"expected a non-empty list of {{role, content}} objects, got {show(raw)}")
    return [parse_message(m, f"messages[{i}]") for i, m in enumerate(raw)]


def parse_message(raw: Any, where: str) -> Message:
    if not isinstance(raw, dict):
        raise bad(where, f"expected an object with role and content, got {show(raw)}")
    extra = sorted(k for k, v in raw.items() if k not in _MESSAGE_FIELDS and v is not None)
    if extra:
        raise bad(f"{where}.{extra[0]}", "not supported by oel serve (a message has role and content)")
    role = raw.get("role")
    if role not in ROLES:
        raise bad(f"{where}.role", f"expected one of {', '.join(ROLES)}, got {show(role)}")
    return Message(role=role, content=_content_text(raw.get("content"), f"{where}.content"))


def _content_text(content: Any, where: str) -> str:
    """A string, or OpenAI's list of {"type": "text", "text": ...} parts (joined)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad(where, f"expected a string or a list of text parts, got {show(content)}")
    texts = []
    for j, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise bad(f"{where}[{j}]", f"expected {{\"type\": \"text\", \"text\": string}}, got {show(part)}")
        texts.append(part["text"])
    return "".join(texts)
