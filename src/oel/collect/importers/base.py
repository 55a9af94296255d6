"""What every log importer shares: one logged model call, chat-message normalisation, streaming reads.

A log importer reads what a team already records about its model traffic (LiteLLM, Langfuse,
OpenTelemetry, plain OpenAI chat logs) and yields one `Call` per model call it finds, or a
`Skip` saying why a record holds nothing to learn from. `oel.collect.importers.run` groups the
calls into conversations and writes trajectories.

Messages are normalised into the trajectory schema's three roles, since the batch stages read
nothing else: a tool call the model made is written into its response as
`<tool_call>{"name": ..., "arguments": ...}</tool_call>` (it is what the model said), and a tool's
result is what the environment answered, so it becomes a user message
`<tool_result name="...">...</tool_result>`; consecutive messages of one role are joined, so a tool
result followed by the user's next words is one environment reply.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oel.errors import DataError
from oel.io import decode_text
from oel.trajectory import Message, check_prompt_roles


class RecordError(ValueError):
    """A record of the expected format that is malformed; the runner adds `file:line`."""


@dataclass(frozen=True)
class Call:
    """One logged model call: the prompt it was sent and the response it gave."""

    messages: tuple[Message, ...]
    response: str
    group: str | None
    """The session / conversation id the log gives it; None: stitched by prefix like the gateway."""
    start: float = 0.0
    """When the call started (seconds); orders a group's calls (ties: file order)."""
    model_id: str = "unknown"
    prompt_tokens: int = 0
    response_tokens: int = 0
    outcome: str | None = None
    """Feedback text logged with the call's conversation (a score comment, an end-of-session note)."""
    scores: Mapping[str, float] = field(default_factory=dict)
    """Numeric scores logged with it: kept for evaluation only, never read by a learning stage."""


@dataclass(frozen=True)
class Skip:
    """A record with nothing to learn from, and why (the kind is counted in the import's report)."""

    kind: str


def _as_int(value: object) -> int:
    try:
        n = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
    return max(n, 0)


def tokens(value: object) -> int:
    """A token count from a log (int, numeric string, or missing): never negative, 0 when unknown."""
    return _as_int(value)


def text_of(content: object) -> str:
    """A message's text: a string, or the text parts of a content list (images and audio dropped)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text", part.get("content")), str):
                parts.append(part.get("text", part.get("content")))
        return "\n".join(parts)
    if isinstance(content, Mapping):
        return text_of(content.get("text", content.get("content")))
    raise RecordError(f"message content: expected a string or a list of parts, got {type(content).__name__}")


def render_tool_call(name: object, arguments: object) -> str:
    """A tool call as the model's words; arguments stay as the model wrote them (a JSON string) when they are one."""
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False, sort_keys=True)
    return f'<tool_call>{{"name": {json.dumps(str(name), ensure_ascii=False)}, "arguments": {arguments}}}</tool_call>'


def render_tool_result(name: object, content: str) -> str:
    label = f' name="{name}"' if name else ""
    return f"<tool_result{label}>{content}</tool_result>"


def openai_message(raw: object, where: str) -> Message:
    """One OpenAI-style chat message (roles system/developer/user/assistant/tool/function) as a schema Message."""
    if not isinstance(raw, Mapping):
        raise RecordError(f"{where}: expected a message object, got {type(raw).__name__}")
    role = raw.get("role")
    content = text_of(raw.get("content"))
    if role == "assistant":
        calls = raw.get("tool_calls") or ([raw["function_call"]] if raw.get("function_call") else [])
        rendered = [render_tool_call(c.get("function", c).get("name"), c.get("function", c).get("arguments", ""))
                    for c in calls if isinstance(c, Mapping)]
        return Message(role="assistant", content="\n".join([content, *rendered]) if content else "\n".join(rendered))
    if role in ("tool", "function"):
        return Message(role="user", content=render_tool_result(raw.get("name") or raw.get("tool_call_id"), content))
    if role in ("system", "developer"):
        return Message(role="system", content=content)
    if role == "user":
        return Message(role="user", content=content)
    raise RecordError(f"{where}.role: expected system, developer, user, assistant or tool, got {role!r:.40}")


def normalise(messages: list[Message]) -> tuple[Message, ...]:
    """Join consecutive messages of one role; a system message after the first turn becomes user text."""
    out: list[Message] = []
    for i, m in enumerate(messages):
        if m.role == "system" and i > 0:
            m = Message(role="user", content=m.content)
        if out and out[-1].role == m.role:
            out[-1] = Message(role=m.role, content=f"{out[-1].content}\n\n{m.content}")
        else:
            out.append(m)
    return tuple(out)


def prompt_or_skip(messages: list[Message]) -> tuple[Message, ...] | Skip:
    """The call's prompt, or a Skip when it is no prompt the schema can hold (empty, ends with the assistant)."""
    prompt = normalise(messages)
    try:
        check_prompt_roles(list(prompt))
    except ValueError:
        return Skip("prompt does not end with a user or tool message (or has none)")
    return prompt


WHAT = "JSONL file"


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, int, bytes]]:
    """Yield (line number, byte offset, raw line) of a file, streamed: a 1 GB export is never read whole."""
    p = Path(path)
    try:
        f = p.open("rb")
    except FileNotFoundError:
        raise DataError(f"{p}: {WHAT} not found") from None
    except IsADirectoryError:
        raise DataError(f"{p}: is a directory, expected {WHAT}") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read {WHAT} ({e.strerror})") from None
    with f:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            yield lineno, offset, raw
            offset += len(raw)


def parse_line(path: str | os.PathLike, lineno: int, raw: bytes) -> dict[str, Any] | None:
    """One JSONL line as an object (None for a blank line); anything else is a one-line `file:line` error."""
    text = decode_text(raw, path, WHAT, first_line=lineno)
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_line_at(path: str | os.PathLike, offset: int) -> bytes:
    """The line starting at byte `offset` (the second pass re-reads a conversation's records by offset)."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.readline()
