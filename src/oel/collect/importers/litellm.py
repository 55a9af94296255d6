"""LiteLLM's logs: the StandardLoggingPayload its callbacks write, and the proxy's spend-log rows.

- payload (https://docs.litellm.ai/docs/proxy/logging_spec): `id`, `trace_id`, `session_id`,
  `call_type`, `status`, `messages`, `response`, `model`, `prompt_tokens`, `completion_tokens`,
  `startTime`, `metadata`. A Responses API call (`call_type` `responses` / `aresponses`) has its
  input items in `messages` and the answer in `response.output[]`.
- spend-log row (the proxy's LiteLLM_SpendLogs table, exported): `request_id`, `spend`,
  `call_type`, `session_id`, `messages` and `response` (stored only with
  `store_prompts_in_spend_logs`), `startTime`.

The session: `session_id` (LiteLLM writes the caller's `litellm_session_id` there), the
caller's `metadata` (`session_id`, `litellm_session_id`, `requester_metadata.session_id`), else
`trace_id`, which older LiteLLM releases fill with `litellm_session_id` and otherwise with a fresh
UUID4 per request: such a random id groups nothing, so those calls are stitched by prefix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from oel.collect.importers.base import (
    Call,
    ChatBuilder,
    RecordError,
    Skip,
    chat_messages,
    is_random_uuid,
    prompt_or_skip,
    seconds,
    tokens,
)
from oel.collect.importers.openai_logs import response_message, responses_input

Item = Call | Skip
CHAT_CALL_TYPES = ("completion", "acompletion", "text_completion", "atext_completion", "chat_completion",
                   "achat_completion")
RESPONSES_CALL_TYPES = ("responses", "aresponses")
SESSION_KEYS = ("session_id", "litellm_session_id")


def session(obj: Mapping[str, Any]) -> str | None:
    """The conversation a call belongs to, by LiteLLM's documented places (module doc)."""
    if isinstance(obj.get("session_id"), str) and obj["session_id"]:
        return obj["session_id"]
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    nested = meta.get("requester_metadata") if isinstance(meta.get("requester_metadata"), Mapping) else {}
    for holder in (meta, nested):
        for key in SESSION_KEYS:
            if isinstance(holder.get(key), str) and holder[key]:
                return holder[key]
    trace = obj.get("trace_id")
    return trace if isinstance(trace, str) and trace and not is_random_uuid(trace) else None


def _json_field(value: object, where: str) -> object:
    """Spend-log rows keep messages / response as JSON text in some exports."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            raise RecordError(f"{where}: invalid JSON text") from None
    return value


def _prompt(obj: Mapping[str, Any], responses: bool) -> ChatBuilder:
    raw = _json_field(obj.get("messages"), "messages")
    if responses:
        chat = ChatBuilder()
        responses_input(raw, chat)
        return chat
    if isinstance(raw, str):  # a text completion's prompt
        chat = ChatBuilder()
        chat.add("user", raw)
        return chat
    return chat_messages(raw, "messages")


def payload_records(obj: Mapping[str, Any], lineno: int) -> Iterator[Item]:
    status = obj.get("status", "success")
    if status != "success":
        yield Skip(f"failed call (status {status!r})")
        return
    call_type = obj.get("call_type")
    responses = call_type in RESPONSES_CALL_TYPES
    if call_type not in CHAT_CALL_TYPES and not responses:
        yield Skip(f"not a chat completion (call_type {call_type!r})")
        return
    if obj.get("messages") in (None, {}, [], ""):
        yield Skip("spend-log row without the prompt (the proxy stores it only with store_prompts_in_spend_logs)"
                   if "request_id" in obj else "call without its messages")
        return
    chat = _prompt(obj, responses)
    prompt = prompt_or_skip(chat.messages)
    if isinstance(prompt, Skip):
        yield prompt
        return
    if not response_message(_json_field(obj.get("response"), "response"), chat):
        yield Skip("no response recorded")
        return
    yield Call(prompt, chat.messages[-1].content, session(obj), seconds(obj.get("startTime")),
               str(obj.get("model") or "unknown"), tokens(obj.get("prompt_tokens")),
               tokens(obj.get("completion_tokens")))


def looks_like(obj: Mapping[str, Any]) -> bool:
    return "call_type" in obj and ("messages" in obj or "request_id" in obj) and \
        any(k in obj for k in ("response", "status", "spend"))


def shape(obj: Mapping[str, Any]) -> str:
    kind = "proxy spend-log row" if "request_id" in obj and "spend" in obj else "StandardLoggingPayload"
    return f"LiteLLM {kind} (call_type {obj.get('call_type')!r})"
