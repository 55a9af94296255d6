"""Langfuse's exports: a trace with its observations, a traces-list row, and observation rows.

- trace (GET /api/public/traces/{id}, TraceWithFullDetails): `id`, `sessionId`, `observations`
  (objects; GENERATIONs have `input`, `output`, `model`, `startTime`, `usage`), `scores`.
- traces-list row (GET /api/public/traces): `observations` is a list of ids, no content: refused by
  name (fetch each trace, or export observations).
- observation row (GET /api/public/observations, and the v2 observations API / blob export):
  `id`, `traceId`, `type`, `sessionId` (v2), `input`, `output`, `startTime`, `usage` /
  `usageDetails`; one call per GENERATION row.

Inputs are OpenAI messages, `{messages, tools}` objects (the OpenAI integration), or LangChain's
messages (`type: human|ai|tool`, tool calls as `{name, args, id, type: "tool_call"}`). The session is
`sessionId`; a trace without one groups its own generations (`trace:<id>`) when it holds several;
observation rows without one are stitched by prefix.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from oel.collect.importers.base import Call, ChatBuilder, RecordError, Skip, chat_messages, prompt_or_skip, seconds, \
    tokens
from oel.collect.importers.openai_logs import response_message

Item = Call | Skip


def feedback(obj: Mapping[str, Any]) -> tuple[str | None, dict[str, float]]:
    """The trace's scores: comments (and categorical values) as outcome text, numbers kept for evaluation only."""
    texts, numbers = [], {}
    for s in obj.get("scores") or []:
        if not isinstance(s, Mapping):
            raise RecordError("scores: expected a list of score objects")
        name = str(s.get("name", "score"))
        value = s.get("value", s.get("stringValue"))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[name] = float(value)
        elif value is not None:
            texts.append(f"{name}: {value}")
        if s.get("comment"):
            texts.append(f"{name}: {s['comment']}")
    return ("; ".join(texts) or None), numbers


def _prompt(raw: object, where: str) -> ChatBuilder:
    if isinstance(raw, Mapping):
        raw = raw.get("messages", raw.get("input"))
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    return chat_messages(raw, where)


def generation(gen: Mapping[str, Any], where: str, group: str | None, outcome: str | None = None,
               scores: Mapping[str, float] | None = None) -> Item:
    """One GENERATION observation as a call."""
    chat = _prompt(gen.get("input"), f"{where}.input")
    prompt = prompt_or_skip(chat.messages)
    if isinstance(prompt, Skip):
        return prompt
    if not response_message(gen.get("output"), chat):
        return Skip("generation without output")
    usage = gen.get("usageDetails") or gen.get("usage") or {}
    usage = usage if isinstance(usage, Mapping) else {}
    return Call(prompt, chat.messages[-1].content, group, seconds(gen.get("startTime")),
                str(gen.get("model") or gen.get("providedModelName") or "unknown"),
                tokens(usage.get("input", usage.get("promptTokens"))),
                tokens(usage.get("output", usage.get("completionTokens"))), outcome, dict(scores or {}))


def _is_generation(o: object) -> bool:
    return isinstance(o, Mapping) and str(o.get("type", "")).upper() == "GENERATION"


def trace_records(obj: Mapping[str, Any], lineno: int) -> Iterator[Item]:
    observations = obj.get("observations")
    if not isinstance(observations, list):
        raise RecordError("observations: expected a list (export traces with their observations)")
    if observations and all(isinstance(o, str) for o in observations):
        raise RecordError("a Langfuse traces-list row: its observations are ids only, without inputs or outputs; "
                          "export each trace (GET /api/public/traces/{id}) or the observations")
    outcome, scores = feedback(obj)
    generations = [o for o in observations if _is_generation(o)]
    group = obj.get("sessionId") or (f"trace:{obj.get('id', lineno)}" if len(generations) > 1 else None)
    if not generations:
        yield Skip("trace without a generation")
    for i, gen in enumerate(generations):
        yield generation(gen, f"observations[{i}]", None if group is None else str(group), outcome, scores)


def observation_records(obj: Mapping[str, Any], lineno: int) -> Iterator[Item]:
    if not _is_generation(obj):
        yield Skip(f"not a generation (observation type {obj.get('type')!r})")
        return
    if str(obj.get("level", "")).upper() == "ERROR":
        yield Skip("failed generation (level ERROR)")
        return
    group = obj.get("sessionId")  # a row does not say whether its trace holds other generations
    yield generation(obj, "observation", None if group is None else str(group))


def is_trace(obj: Mapping[str, Any]) -> bool:
    return "observations" in obj and "id" in obj


def is_observation(obj: Mapping[str, Any]) -> bool:
    return "traceId" in obj and "type" in obj and "id" in obj and "startTime" in obj


def shape(obj: Mapping[str, Any]) -> str:
    if is_trace(obj):
        rows = obj.get("observations")
        if isinstance(rows, list) and rows and all(isinstance(o, str) for o in rows):
            return "Langfuse traces-list row (observation ids only)"
        return "Langfuse trace with its observations"
    return f"Langfuse observation ({obj.get('type')})"
