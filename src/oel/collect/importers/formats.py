"""The log formats `oel import-logs` reads, how a record is recognised, and what each record's shape is called.

Each format turns one record into model calls (or skips) in its own module: litellm.py,
langfuse.py, otel.py, openai_logs.py (chat logs, Responses API objects, Batch output). A format
here has a name, what its records look like (auto-detection, and the one-line refusal of a record
of another format), its reader, and `shape(obj)`: the recognised shape and, where the record says
it, the tool's version (`--explain`, and the error of an import that yields nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from oel.collect.importers import langfuse, litellm, openai_logs, otel
from oel.collect.importers.base import Call, Skip

Item = Call | Skip


@dataclass(frozen=True)
class LogFormat:
    name: str
    expected: str
    """What a record looks like, for the refusal of a file in another format."""
    looks_like: Callable[[Mapping[str, Any]], bool]
    records: Callable[[Mapping[str, Any], int], Iterator[Item]]
    shape: Callable[[Mapping[str, Any]], str]


def _langfuse_records(obj: Mapping[str, Any], lineno: int) -> Iterator[Item]:
    reader = langfuse.trace_records if langfuse.is_trace(obj) else langfuse.observation_records
    return reader(obj, lineno)


def _is_batch_output(obj: Mapping[str, Any]) -> bool:
    return "custom_id" in obj and "response" in obj and "error" in obj


def _is_response(obj: Mapping[str, Any]) -> bool:
    return obj.get("object") == "response" and "output" in obj


FORMATS: dict[str, LogFormat] = {
    "litellm": LogFormat("litellm", "a LiteLLM StandardLoggingPayload or proxy spend-log row per line (call_type, "
                         "messages, response)", litellm.looks_like, litellm.payload_records, litellm.shape),
    "langfuse": LogFormat("langfuse", "a Langfuse trace (id, observations) or observation (id, traceId, type) per line",
                          lambda o: langfuse.is_trace(o) or langfuse.is_observation(o), _langfuse_records,
                          langfuse.shape),
    "otel": LogFormat("otel", "an OTLP JSON ExportTraceServiceRequest per line (resourceSpans)",
                      lambda o: "resourceSpans" in o, otel.records, otel.shape),
    "openai-responses": LogFormat("openai-responses", "a Responses API response object with its request's input per "
                                  "line (object: response, input, output)", _is_response,
                                  openai_logs.responses_records, lambda o: "OpenAI Responses API object"),
    "openai-batch": LogFormat("openai-batch", "an OpenAI Batch output line (custom_id, response.body, error)",
                              _is_batch_output, lambda o, n: openai_logs.batch_records(o, n, None),
                              lambda o: "OpenAI Batch output line"),
    "openai": LogFormat("openai", "an OpenAI chat log per line ({\"messages\": [...]})",
                        lambda o: "messages" in o and not litellm.looks_like(o), openai_logs.chat_records,
                        lambda o: "OpenAI chat log (a whole conversation per line)"),
}


def detect(obj: Mapping[str, Any]) -> str | None:
    """The format a record looks like, or None."""
    return next((name for name, f in FORMATS.items() if f.looks_like(obj)), None)


def describe_unknown(obj: Mapping[str, Any]) -> str:
    """What an unrecognised record holds: its first keys, for the refusal."""
    keys = ", ".join(sorted(obj)[:8])
    return f"a JSON object with keys {keys}{', ...' if len(obj) > 8 else ''}"
