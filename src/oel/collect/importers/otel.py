"""OpenTelemetry spans in OTLP JSON (one ExportTraceServiceRequest per line, the collector's file exporter).

A model call is one span; its messages are read from whichever convention wrote them:

- GenAI semantic conventions (opentelemetry-instrumentation-openai-v2, OpenLLMetry >= 0.5x):
  `gen_ai.input.messages` / `gen_ai.output.messages` (role + parts: text, tool_call,
  tool_call_response) and `gen_ai.system_instructions`.
- OpenLLMetry's indexed attributes (older releases): `gen_ai.prompt.N.role|content|tool_call_id`,
  `gen_ai.prompt.N.tool_calls.M.id|name|arguments`, `gen_ai.completion.N.*`; the span says
  `llm.request.type` instead of `gen_ai.operation.name`.
- The span-event convention: events `gen_ai.content.prompt` / `gen_ai.content.completion` holding
  `gen_ai.prompt` / `gen_ai.completion` as JSON messages.
- OpenInference (Arize Phoenix): `openinference.span.kind` LLM, `llm.input_messages.N.message.*`,
  `llm.output_messages.N.message.*` (tool calls under `tool_calls.M.tool_call.*`), `session.id`.
- Langfuse's SDK: `langfuse.observation.type` generation, `langfuse.observation.input|output` (JSON).

The conversation: `gen_ai.conversation.id`, else `session.id` / `langfuse.session.id`, else the trace
when the span has a parent (an agent's run: its calls share the trace); a root span's trace holds only
itself, so such calls are stitched by prefix. A span with status ERROR is a failed call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from oel.collect.importers import langfuse
from oel.collect.importers.base import Call, ChatBuilder, RecordError, Skip, chat_messages, prompt_or_skip, \
    text_of, tokens, tool_uses
from oel.collect.importers.openai_logs import response_message

Item = Call | Skip
CHAT_OPERATIONS = ("chat", "text_completion", "generate_content", "completion")
STATUS_ERROR = ("STATUS_CODE_ERROR", 2)
NANOSECONDS = 1e9
SESSION_ATTRIBUTES = ("gen_ai.conversation.id", "session.id", "langfuse.session.id")
_INDEX = re.compile(r"^(?P<head>[a-z_.]+?)\.(?P<i>\d+)\.(?P<rest>.+)$")


def value(v: object) -> object:
    """An OTLP JSON AnyValue as a Python value (intValue is a string in OTLP JSON)."""
    if not isinstance(v, Mapping):
        raise RecordError("attributes: expected {key, value: {stringValue|intValue|...}}")
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in v:
            return v[key]
    if "intValue" in v:
        return int(v["intValue"])
    if "arrayValue" in v:
        return [value(x) for x in (v["arrayValue"] or {}).get("values", [])]
    if "kvlistValue" in v:
        return {kv["key"]: value(kv.get("value")) for kv in (v["kvlistValue"] or {}).get("values", [])}
    return None


def attributes(holder: Mapping[str, Any]) -> dict[str, object]:
    attrs = holder.get("attributes") or []
    if not isinstance(attrs, list):
        raise RecordError("attributes: expected a list of {key, value}")
    return {a["key"]: value(a.get("value")) for a in attrs if isinstance(a, Mapping) and "key" in a}


def _json(raw: object, key: str) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        if key.endswith("output"):  # Langfuse writes a plain-text answer as it is
            return raw
        raise RecordError(f"{key}: expected JSON text") from None


def indexed(attrs: Mapping[str, object], prefix: str) -> list[dict[str, Any]]:
    """`prefix.N.a.b` attributes as a list of nested dicts (index N), e.g. OpenLLMetry's gen_ai.prompt.N.*."""
    items: dict[int, dict[str, Any]] = {}
    for key, v in attrs.items():
        if not key.startswith(prefix + "."):
            continue
        head, _, rest = key[len(prefix) + 1:].partition(".")
        if head.isdigit() and rest:
            _put(items.setdefault(int(head), {}), rest, v)
    return [items[i] for i in sorted(items)]


def _put(node: dict[str, Any], path: str, v: object) -> None:
    """Set `a.0.b` under node as node['a'][0]['b'] (lists are dicts of int keys until read)."""
    head, _, rest = path.partition(".")
    if not rest:
        node[head] = v
        return
    key: Any = int(head) if head.isdigit() else head
    child = node.setdefault(key, {})
    _put(child, rest, v)


def _lists(node: Any) -> Any:
    """Dicts keyed by ints (from `_put`) as lists, in index order."""
    if isinstance(node, dict):
        if node and all(isinstance(k, int) for k in node):
            return [_lists(node[k]) for k in sorted(node)]
        return {k: _lists(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_lists(v) for v in node]
    return node


def _parts_message(raw: Mapping[str, Any], chat: ChatBuilder) -> None:
    """A semconv message (role + parts) into `chat`."""
    role, texts, calls = raw.get("role"), [], []
    for p in raw.get("parts") or []:
        kind = p.get("type") if isinstance(p, Mapping) else None
        if kind == "text":
            texts.append(str(p.get("content", "")))
        elif kind == "tool_call":
            calls.append({"name": p.get("name"), "arguments": p.get("arguments", {}), "id": p.get("id")})
        elif kind == "tool_call_response":
            response = p.get("response", p.get("result"))
            chat.tool(response if isinstance(response, str) else json.dumps(response, ensure_ascii=False),
                      call_id=p.get("id"))
    if role == "assistant":
        chat.assistant("\n".join(texts), tool_uses(calls))
    elif role != "tool" or texts:
        chat.openai({"role": role, "content": "\n".join(texts)}, "message")


def _semconv(attrs: Mapping[str, object]) -> tuple[ChatBuilder, bool]:
    chat = ChatBuilder()
    system = _json(attrs.get("gen_ai.system_instructions"), "gen_ai.system_instructions")
    if system:
        chat.add("system", text_of(system) if not isinstance(system, list) else
                 "\n".join(str(p.get("content", "")) for p in system if isinstance(p, Mapping)))
    for key in ("gen_ai.input.messages", "gen_ai.output.messages"):
        msgs = _json(attrs.get(key, "[]"), key)
        if not isinstance(msgs, list):
            raise RecordError(f"{key}: expected a JSON list of messages")
        if key.endswith("output.messages"):
            prompt_len = len(chat.messages)
            msgs = msgs[:1]
        for m in msgs:
            if isinstance(m, Mapping):
                _parts_message(m, chat)
    return chat, len(chat.messages) > prompt_len


def _openllmetry(attrs: Mapping[str, object]) -> tuple[ChatBuilder, bool]:
    chat = ChatBuilder()
    for m in _lists(indexed(attrs, "gen_ai.prompt")):
        chat.openai(m, "gen_ai.prompt")
    done = response_message(_lists(indexed(attrs, "gen_ai.completion"))[:1], chat)
    return chat, done


def _openinference(attrs: Mapping[str, object]) -> tuple[ChatBuilder, bool]:
    chat = ChatBuilder()
    for m in _lists(indexed(attrs, "llm.input_messages")):
        chat.openai(_oi_message(m.get("message", {})), "llm.input_messages")
    outputs = [_oi_message(m.get("message", {})) for m in _lists(indexed(attrs, "llm.output_messages"))]
    return chat, response_message(outputs[:1], chat)


def _oi_message(m: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenInference message (contents / tool_calls.M.tool_call.function.*) as an OpenAI one."""
    contents = m.get("contents") or []
    content = m.get("content", "\n".join(str(c.get("message_content", {}).get("text", "")) for c in contents))
    calls = [{"id": c.get("tool_call", {}).get("id"), **c.get("tool_call", {})} for c in m.get("tool_calls") or []]
    return {"role": m.get("role"), "content": content, "tool_calls": calls, "tool_call_id": m.get("tool_call_id"),
            "name": m.get("name")}


def _span_events(span: Mapping[str, Any]) -> tuple[ChatBuilder, bool]:
    found = {e.get("name"): attributes(e) for e in span.get("events") or [] if isinstance(e, Mapping)}
    chat = chat_messages(_json(found["gen_ai.content.prompt"].get("gen_ai.prompt", "[]"), "gen_ai.prompt"),
                         "gen_ai.prompt")
    completion = _json(found.get("gen_ai.content.completion", {}).get("gen_ai.completion", "[]"), "gen_ai.completion")
    return chat, response_message(completion, chat)


def _langfuse(attrs: Mapping[str, object]) -> tuple[ChatBuilder, bool]:
    gen = {"input": _json(attrs.get("langfuse.observation.input"), "langfuse.observation.input"),
           "output": _json(attrs.get("langfuse.observation.output"), "langfuse.observation.output")}
    item = langfuse.generation(gen, "langfuse.observation", None)
    chat = ChatBuilder()
    if isinstance(item, Call):
        chat.messages.extend([*item.messages])
        chat.assistant(item.response)
    return chat, isinstance(item, Call)


def convention(span: Mapping[str, Any], attrs: Mapping[str, object]) -> str | None:
    """Which convention holds the span's messages (the names `shape` reports), or None for none."""
    if "gen_ai.input.messages" in attrs:
        return "GenAI semantic conventions (gen_ai.input.messages)"
    if any(k.startswith("gen_ai.prompt.") for k in attrs):
        return "OpenLLMetry indexed attributes (gen_ai.prompt.N.*)"
    if any(isinstance(e, Mapping) and e.get("name") == "gen_ai.content.prompt" for e in span.get("events") or []):
        return "span events (gen_ai.content.prompt / gen_ai.content.completion)"
    if any(k.startswith("llm.input_messages.") for k in attrs):
        return "OpenInference (llm.input_messages.N.*)"
    if "langfuse.observation.input" in attrs:
        return "Langfuse SDK (langfuse.observation.input)"
    return None


READERS = {"GenAI": _semconv, "OpenLLMetry": _openllmetry, "OpenInference": _openinference, "Langfuse": _langfuse}


def _is_model_call(attrs: Mapping[str, object]) -> bool:
    return (attrs.get("gen_ai.operation.name") in CHAT_OPERATIONS or attrs.get("llm.request.type") in CHAT_OPERATIONS
            or attrs.get("openinference.span.kind") == "LLM"
            or str(attrs.get("langfuse.observation.type", "")).lower() == "generation")


def _group(span: Mapping[str, Any], attrs: Mapping[str, object]) -> str | None:
    for key in SESSION_ATTRIBUTES:
        if attrs.get(key):
            return str(attrs[key])
    return f"trace:{span.get('traceId')}" if span.get("parentSpanId") and span.get("traceId") else None


def span_item(span: Mapping[str, Any]) -> Item:
    attrs = attributes(span)
    if not _is_model_call(attrs):
        what = attrs.get("gen_ai.operation.name") or attrs.get("openinference.span.kind") or span.get("name")
        return Skip(f"not a model call span ({str(what)[:40]!r})")
    status = span.get("status") if isinstance(span.get("status"), Mapping) else {}
    if status.get("code") in STATUS_ERROR:
        return Skip("failed call (span status ERROR)")
    found = convention(span, attrs)
    if found is None:
        return Skip("model call span without message content (content capture off)")
    reader = _span_events if found.startswith("span events") else READERS[found.split()[0]]
    chat, answered = reader(span) if reader is _span_events else reader(attrs)  # type: ignore[operator]
    prompt = prompt_or_skip(chat.messages[:-1] if answered else chat.messages)
    if isinstance(prompt, Skip):
        return prompt
    if not answered:
        return Skip("model call span without output messages")
    model = (attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model") or attrs.get("llm.model_name")
             or attrs.get("langfuse.observation.model.name") or "unknown")
    usage = _json(attrs.get("langfuse.observation.usage_details"), "usage_details") or {}
    usage = usage if isinstance(usage, Mapping) else {}
    return Call(prompt, chat.messages[-1].content, _group(span, attrs),
                int(span.get("startTimeUnixNano") or 0) / NANOSECONDS, str(model),
                tokens(attrs.get("gen_ai.usage.input_tokens", attrs.get("gen_ai.usage.prompt_tokens",
                       attrs.get("llm.token_count.prompt", usage.get("prompt_tokens", usage.get("input")))))),
                tokens(attrs.get("gen_ai.usage.output_tokens", attrs.get("gen_ai.usage.completion_tokens",
                       attrs.get("llm.token_count.completion", usage.get("completion_tokens",
                                                                         usage.get("output")))))))


def _spans(obj: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(scope, span) of every span in an export request."""
    resource_spans = obj.get("resourceSpans")
    if not isinstance(resource_spans, list):
        raise RecordError("resourceSpans: expected a list")
    for r in resource_spans:
        for scope in (r or {}).get("scopeSpans") or []:
            for span in (scope or {}).get("spans") or []:
                if not isinstance(span, Mapping):
                    raise RecordError("spans: expected a list of span objects")
                yield (scope or {}).get("scope") or {}, span


def records(obj: Mapping[str, Any], lineno: int) -> Iterator[Item]:
    for _, span in _spans(obj):
        yield span_item(span)


def shape(obj: Mapping[str, Any]) -> str:
    """The instrumentation (scope name and version) and the convention of the record's model-call spans."""
    seen = []
    for scope, span in _spans(obj):
        attrs = attributes(span)
        if _is_model_call(attrs):
            name = f"{scope.get('name', '?')} {scope.get('version', '')}".strip()
            seen.append(f"{name}: {convention(span, attrs) or 'no message content'}")
    return "; ".join(dict.fromkeys(seen)) or "OTLP spans without a model call"
