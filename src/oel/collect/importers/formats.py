"""The log formats `oel import-logs` reads: each turns one JSONL record into model calls (or skips).

Every format is an object with a name, what a record of it looks like (auto-detection, and the
one-line refusal of a file in another format), and `records(obj, lineno)`, which yields a `Call`
per model call in the record or a `Skip` naming why it holds none, and raises RecordError for a
record that is malformed. The schemas followed (read from each project's published docs, no code
copied):

- litellm: LiteLLM proxy's StandardLoggingPayload, one per line (what its file / S3 / custom
  callbacks write): `id`, `trace_id`, `call_type`, `status`, `messages`, `response` (the OpenAI
  response object), `model`, `prompt_tokens`, `completion_tokens`, `startTime`, `metadata`
  (https://docs.litellm.ai/docs/proxy/logging_spec).
- langfuse: one trace per line as Langfuse's public API returns it (GET /api/public/traces/{id}):
  `id`, `sessionId`, `timestamp`, `observations` (type GENERATION: `input`, `output`, `model`,
  `startTime`, `usage`), `scores` (`name`, `value`, `comment`) (https://api.reference.langfuse.com).
- otel: OTLP JSON (one ExportTraceServiceRequest per line, the collector's file exporter):
  `resourceSpans[].scopeSpans[].spans[]` whose attributes follow the GenAI semantic conventions:
  `gen_ai.operation.name`, `gen_ai.conversation.id`, `gen_ai.input.messages` /
  `gen_ai.output.messages` (role + parts), or the older indexed `gen_ai.prompt.N.role/content`,
  `gen_ai.completion.N.content` that OpenLLMetry writes (https://opentelemetry.io/docs/specs/semconv/gen-ai/).
- openai: `{"messages": [...]}` per line, a whole conversation; optional `id`, `env_id`, `seed`,
  `model_id`, `outcome`, `passed` (what `oel import-logs` always read).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from oel.collect.importers.base import (
    Call,
    RecordError,
    Skip,
    normalise,
    openai_message,
    prompt_or_skip,
    render_tool_call,
    render_tool_result,
    tokens,
)
from oel.trajectory import Message

Item = Call | Skip
CHAT_CALL_TYPES = ("completion", "acompletion", "text_completion", "atext_completion", "chat_completion",
                   "achat_completion", "responses", "aresponses")
OTEL_CHAT_OPERATIONS = ("chat", "text_completion", "generate_content")


@dataclass(frozen=True)
class LogFormat:
    name: str
    expected: str
    """What a record looks like, for the refusal of a file in another format."""
    looks_like: Callable[[Mapping[str, Any]], bool]
    records: Callable[[Mapping[str, Any], int], Iterator[Item]]


def _messages(raw: object, where: str) -> list[Message]:
    if not isinstance(raw, list):
        raise RecordError(f"{where}: expected a list of chat messages, got {type(raw).__name__}")
    return [openai_message(m, f"{where}[{i}]") for i, m in enumerate(raw)]


def _response_message(raw: object, where: str) -> Message | None:
    """The assistant's answer in an OpenAI response object, a message, a list of messages or plain text."""
    if isinstance(raw, str):
        return Message(role="assistant", content=raw)
    if isinstance(raw, list):
        return _response_message(raw[0], f"{where}[0]") if raw else None
    if not isinstance(raw, Mapping):
        return None
    if "choices" in raw:
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            return None
        first = choices[0]
        return _response_message(first.get("message", first.get("text")), f"{where}.choices[0]")
    if "role" in raw or "content" in raw or "tool_calls" in raw:
        return openai_message({**raw, "role": "assistant"}, where)
    return None


def _seconds(value: object) -> float:
    """A log's timestamp (epoch seconds, or ISO 8601 text) as epoch seconds; 0 when missing."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise RecordError(f"timestamp: expected epoch seconds or ISO 8601, got {value!r:.40}") from None
    return 0.0


# ---- LiteLLM ------------------------------------------------------------------------------------


def _litellm_session(obj: Mapping[str, Any]) -> str | None:
    """A session id the caller sent through LiteLLM's metadata; else None (LiteLLM's own trace_id
    is new per request unless the client sets one, so conversations are stitched by prefix)."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    for holder in (meta, meta.get("requester_metadata") if isinstance(meta.get("requester_metadata"), Mapping) else {}):
        for key in ("session_id", "litellm_session_id"):
            if isinstance(holder.get(key), str) and holder[key]:
                return holder[key]
    return None


def litellm_records(obj: Mapping[str, Any], lineno: int) -> Iterator[Item]:
    if obj.get("status", "success") != "success":
        yield Skip(f"failed call (status {obj.get('status')!r})")
        return
    if obj.get("call_type") not in CHAT_CALL_TYPES:
        yield Skip(f"not a chat completion (call_type {obj.get('call_type')!r})")
        return
    prompt = prompt_or_skip(_messages(obj.get("messages"), "messages"))
    answer = _response_message(obj.get("response"), "response")
    if isinstance(prompt, Skip):
        yield prompt
    elif answer is None:
        yield Skip("no response recorded")
    else:
        yield Call(prompt, answer.content, _litellm_session(obj), _seconds(obj.get("startTime")),
                   str(obj.get("model") or "unknown"), tokens(obj.get("prompt_tokens")),
                   tokens(obj.get("completion_tokens")))


# ---- Langfuse -----------------------------------------------------------------------------------


def _langfuse_feedback(obj: Mapping[str, Any]) -> tuple[str | None, dict[str, float]]:
    """The trace's scores: comments (and categorical values) as outcome text, numbers kept for evaluation only."""
    texts, numbers = [], {}
    for s in obj.get("scores") or []:
        if not isinstance(s, Mapping):
            raise RecordError("scores: expected a list of score objects")
        name = str(s.get("name", "score"))
        value = s.get("value", s.get("stringValue"))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[name] = float(value)
        elif isinstance(s.get("stringValue", value), str):
            texts.append(f"{name}: {s.get('stringValue', value)}")
        if isinstance(s.get("comment"), str) and s["comment"]:
            texts.append(f"{name}: {s['comment']}")
    return ("\n".join(texts) or None), numbers


def langfuse_records(obj: Mapping[str, Any], lineno: int) -> Iterator[Item]:
    observations = obj.get("observations")
    if not isinstance(observations, list):
        raise RecordError("observations: expected a list (export traces with their observations)")
    outcome, scores = _langfuse_feedback(obj)
    group = obj.get("sessionId") or f"trace:{obj.get('id', lineno)}"
    generations = [o for o in observations if isinstance(o, Mapping) and o.get("type") == "GENERATION"]
    if not generations:
        yield Skip("trace without a generation")
    for i, gen in enumerate(generations):
        raw = gen.get("input")
        raw = raw.get("messages") if isinstance(raw, Mapping) else raw
        if isinstance(raw, str):
            raw = [{"role": "user", "content": raw}]
        prompt = prompt_or_skip(_messages(raw, f"observations[{i}].input"))
        answer = _response_message(gen.get("output"), f"observations[{i}].output")
        usage = gen.get("usage") if isinstance(gen.get("usage"), Mapping) else {}
        if isinstance(prompt, Skip):
            yield prompt
        elif answer is None:
            yield Skip("generation without output")
        else:
            yield Call(prompt, answer.content, str(group), _seconds(gen.get("startTime")),
                       str(gen.get("model") or "unknown"), tokens(usage.get("input")), tokens(usage.get("output")),
                       outcome, scores)


# ---- OpenTelemetry GenAI ------------------------------------------------------------------------


def _otel_value(v: object) -> object:
    """An OTLP JSON AnyValue as a Python value (intValue is a string in OTLP JSON)."""
    if not isinstance(v, Mapping):
        raise RecordError("attributes: expected {key, value: {stringValue|intValue|...}}")
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in v:
            return v[key]
    if "intValue" in v:
        return int(v["intValue"])
    if "arrayValue" in v:
        return [_otel_value(x) for x in (v["arrayValue"] or {}).get("values", [])]
    if "kvlistValue" in v:
        return {kv["key"]: _otel_value(kv.get("value")) for kv in (v["kvlistValue"] or {}).get("values", [])}
    return None


def _otel_attributes(span: Mapping[str, Any]) -> dict[str, object]:
    attrs = span.get("attributes") or []
    if not isinstance(attrs, list):
        raise RecordError("attributes: expected a list of {key, value}")
    return {a["key"]: _otel_value(a.get("value")) for a in attrs if isinstance(a, Mapping) and "key" in a}


def _parts_message(raw: Mapping[str, Any]) -> Message:
    """A semconv message (`role` + `parts`: text, tool_call, tool_call_response) as a schema Message."""
    texts = []
    for p in raw.get("parts") or []:
        kind = p.get("type") if isinstance(p, Mapping) else None
        if kind == "text":
            texts.append(str(p.get("content", "")))
        elif kind == "tool_call":
            texts.append(render_tool_call(p.get("name"), p.get("arguments", {})))
        elif kind == "tool_call_response":
            response = p.get("response")
            texts.append(render_tool_result(p.get("id"),
                                            response if isinstance(response, str) else json.dumps(response)))
    role, text = raw.get("role"), "\n".join(texts)
    if role == "tool":  # its parts are tool_call_response, already rendered as a tool result
        return Message(role="user", content=text)
    return openai_message({"role": role, "content": text}, "message")


def _otel_messages(attrs: Mapping[str, object]) -> tuple[list[Message], Message | None] | None:
    """(prompt, answer) from gen_ai.input/output.messages, or from OpenLLMetry's indexed attributes."""
    if "gen_ai.input.messages" in attrs:
        def load(key: str) -> list:
            value = attrs.get(key, "[]")
            value = json.loads(value) if isinstance(value, str) else value
            if not isinstance(value, list):
                raise RecordError(f"{key}: expected a JSON list of messages")
            return value
        outputs = [_parts_message(m) for m in load("gen_ai.output.messages")]
        return [_parts_message(m) for m in load("gen_ai.input.messages")], (outputs[0] if outputs else None)
    if "gen_ai.prompt.0.role" not in attrs:
        return None
    prompt, i = [], 0
    while f"gen_ai.prompt.{i}.role" in attrs:
        prompt.append(openai_message({"role": attrs[f"gen_ai.prompt.{i}.role"],
                                      "content": attrs.get(f"gen_ai.prompt.{i}.content"),
                                      "tool_call_id": attrs.get(f"gen_ai.prompt.{i}.tool_call_id")},
                                      f"gen_ai.prompt.{i}"))
        i += 1
    if "gen_ai.completion.0.content" not in attrs and "gen_ai.completion.0.tool_calls.0.name" not in attrs:
        return prompt, None
    calls, k = [], 0
    while f"gen_ai.completion.0.tool_calls.{k}.name" in attrs:
        calls.append({"function": {"name": attrs[f"gen_ai.completion.0.tool_calls.{k}.name"],
                                   "arguments": attrs.get(f"gen_ai.completion.0.tool_calls.{k}.arguments", "")}})
        k += 1
    answer = openai_message({"role": "assistant", "content": attrs.get("gen_ai.completion.0.content"),
                             "tool_calls": calls}, "gen_ai.completion.0")
    return prompt, answer


def _otel_span(span: Mapping[str, Any]) -> Item:
    attrs = _otel_attributes(span)
    operation = attrs.get("gen_ai.operation.name")
    if operation not in OTEL_CHAT_OPERATIONS:
        return Skip(f"not a GenAI chat span (gen_ai.operation.name {operation!r})")
    found = _otel_messages(attrs)
    if found is None:
        return Skip("chat span without message content (content capture off)")
    messages, answer = found
    prompt = prompt_or_skip(messages)
    if isinstance(prompt, Skip):
        return prompt
    if answer is None:
        return Skip("chat span without output messages")
    start = int(span.get("startTimeUnixNano") or 0) / 1e9
    model = attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model") or "unknown"
    group = attrs.get("gen_ai.conversation.id")
    return Call(prompt, answer.content, str(group) if group else None, start, str(model),
                tokens(attrs.get("gen_ai.usage.input_tokens", attrs.get("gen_ai.usage.prompt_tokens"))),
                tokens(attrs.get("gen_ai.usage.output_tokens", attrs.get("gen_ai.usage.completion_tokens"))))


def otel_records(obj: Mapping[str, Any], lineno: int) -> Iterator[Item]:
    resource_spans = obj.get("resourceSpans")
    if not isinstance(resource_spans, list):
        raise RecordError("resourceSpans: expected a list")
    for r in resource_spans:
        for scope in (r or {}).get("scopeSpans") or []:
            for span in (scope or {}).get("spans") or []:
                if not isinstance(span, Mapping):
                    raise RecordError("spans: expected a list of span objects")
                yield _otel_span(span)


# ---- plain OpenAI chat logs ---------------------------------------------------------------------


def openai_records(obj: Mapping[str, Any], lineno: int) -> Iterator[Item]:
    """One conversation per record: every assistant message is a call whose prompt is what precedes it."""
    msgs = list(normalise(_messages(obj.get("messages"), "messages")))
    assistant = [k for k, m in enumerate(msgs) if m.role == "assistant"]
    if not assistant:
        yield Skip("no assistant message: nothing the model said")
        return
    outcome = obj.get("outcome") or (msgs[-1].content if msgs[-1].role == "user" else None)
    for k in assistant:
        prompt = prompt_or_skip(msgs[:k])
        if isinstance(prompt, Skip):
            raise RecordError(f"messages[{k}]: {prompt.kind}")
        yield Call(prompt, msgs[k].content, f"line:{lineno}", float(k), str(obj.get("model_id") or "unknown"),
                   outcome=str(outcome) if outcome else None)


def _is_litellm(obj: Mapping[str, Any]) -> bool:
    return "call_type" in obj and "messages" in obj and ("response" in obj or "status" in obj)


FORMATS: dict[str, LogFormat] = {
    "litellm": LogFormat("litellm", "a LiteLLM StandardLoggingPayload per line (call_type, messages, response)",
                         _is_litellm, litellm_records),
    "langfuse": LogFormat("langfuse", "a Langfuse trace per line (id, observations, optional sessionId and scores)",
                          lambda o: "observations" in o and "id" in o, langfuse_records),
    "otel": LogFormat("otel", "an OTLP JSON ExportTraceServiceRequest per line (resourceSpans)",
                      lambda o: "resourceSpans" in o, otel_records),
    "openai": LogFormat("openai", "an OpenAI chat log per line ({\"messages\": [...]})",
                        lambda o: "messages" in o and not _is_litellm(o), openai_records),
}


def detect(obj: Mapping[str, Any]) -> str | None:
    """The format a record looks like, or None."""
    return next((name for name, f in FORMATS.items() if f.looks_like(obj)), None)
