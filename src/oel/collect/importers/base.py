"""What every log importer shares: one logged model call, chat-message normalisation, small value readers.

A log importer reads what a team already records about its model traffic (LiteLLM, Langfuse,
OpenTelemetry, OpenAI files) and yields one `Call` per model call it finds, or a `Skip` saying why
a record holds nothing to learn from. `oel.collect.importers.run` groups the calls into
conversations and writes trajectories.

Messages are normalised into the trajectory schema's three roles (oel.tool_text): a tool call the
model made is written into its response as `<tool_call>{"name": ..., "arguments": ...}</tool_call>`,
a tool's result becomes a user message `<tool_result name="...">...</tool_result>` labelled with the
tool's name (looked up from the call it answers when the log gives only the call id), and
consecutive messages of one role are joined.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from oel.tool_text import join_roles, render_tool_call, render_tool_result
from oel.trajectory import Message, check_prompt_roles


class RecordError(ValueError):
    """A record of the expected format that is malformed; the runner adds `file:line`."""


@dataclass(frozen=True)
class Call:
    """One logged model call: the prompt it was sent and the response it gave."""

    messages: tuple[Message, ...]
    response: str
    group: str | None
    """The session / trace the log puts it in; None: any conversation (stitched by prefix)."""
    start: float = 0.0
    """When the call started (seconds); orders a conversation's calls (ties: file order)."""
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


def tokens(value: object) -> int:
    """A token count from a log (int, numeric string, or missing): never negative, 0 when unknown."""
    try:
        n = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
    return max(n, 0)


def seconds(value: object) -> float:
    """A log's timestamp (epoch seconds or nanoseconds, or ISO 8601 text) as epoch seconds; 0 when missing."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise RecordError(f"timestamp: expected epoch seconds or ISO 8601, got {value!r:.40}") from None
    return 0.0


BOOLEAN_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def boolean(value: object, where: str) -> bool | None:
    """A boolean as logs write it: true/false, 1/0, or those words as text; anything else is refused."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in BOOLEAN_WORDS:
        return BOOLEAN_WORDS[value.strip().lower()]
    raise RecordError(f"{where}: expected true or false, got {value!r:.40}")


def is_random_uuid(value: str) -> bool:
    """Whether `value` is a version-4 UUID: what tools write as a fresh per-request id when the caller gave none."""
    try:
        return uuid.UUID(value).version == 4
    except ValueError:
        return False


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
            elif isinstance(part, Mapping):
                text = part.get("text", part.get("content"))
                if isinstance(text, str):
                    parts.append(text)
        return "\n".join(parts)
    if isinstance(content, Mapping):
        return text_of(content.get("text", content.get("content")))
    raise RecordError(f"message content: expected a string or a list of parts, got {type(content).__name__}")


@dataclass(frozen=True)
class ToolUse:
    """A tool call as a log gives it: a name, arguments (text or an object), and the id results refer to."""

    name: str
    arguments: object
    id: str | None = None


def tool_uses(raw: object) -> list[ToolUse]:
    """OpenAI `tool_calls` / `function_call` or LangChain's `{name, args, id, type: tool_call}` entries."""
    if isinstance(raw, Mapping):
        raw = [raw]
    uses = []
    for c in raw if isinstance(raw, list) else []:
        if not isinstance(c, Mapping):
            continue
        fn = c.get("function") if isinstance(c.get("function"), Mapping) else c
        args = fn.get("arguments", fn.get("args", c.get("args", "")))
        uses.append(ToolUse(str(fn.get("name", "")), args, c.get("id") if isinstance(c.get("id"), str) else None))
    return uses


class ChatBuilder:
    """Builds a call's messages one log message at a time, remembering which tool each call id names."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._names: dict[str, str] = {}

    def assistant(self, text: str, calls: Iterable[ToolUse] = ()) -> Message:
        rendered = []
        for c in calls:
            if c.id:
                self._names[c.id] = c.name
            rendered.append(render_tool_call(c.name, c.arguments))
        m = Message(role="assistant", content="\n".join([text, *rendered] if text else rendered))
        self.messages.append(m)
        return m

    def tool(self, content: str, name: str | None = None, call_id: str | None = None) -> None:
        self.messages.append(Message(role="user", content=render_tool_result(name or self._names.get(call_id or ""),
                                                                             content)))

    def add(self, role: str, content: str) -> None:
        self.messages.append(Message(role=role, content=content))  # type: ignore[arg-type]

    def openai(self, raw: object, where: str) -> None:
        """One OpenAI-style (or LangChain-style) chat message."""
        if not isinstance(raw, Mapping):
            raise RecordError(f"{where}: expected a message object, got {type(raw).__name__}")
        role = raw.get("role", LANGCHAIN_ROLES.get(str(raw.get("type"))))
        content = text_of(raw.get("content"))
        if role == "assistant":
            self.assistant(content, tool_uses(raw.get("tool_calls") or raw.get("function_call")))
        elif role in ("tool", "function"):
            self.tool(content, raw.get("name") if role == "function" else None, raw.get("tool_call_id"))
        elif role in ("system", "developer"):
            self.add("system", content)
        elif role == "user":
            self.add("user", content)
        else:
            raise RecordError(f"{where}.role: expected system, developer, user, assistant or tool, got {role!r:.40}")


LANGCHAIN_ROLES = {"human": "user", "ai": "assistant", "tool": "tool", "system": "system"}
"""LangChain's message `type`s (what its callback handlers log) as chat roles."""


def chat_messages(raw: object, where: str) -> ChatBuilder:
    """A list of OpenAI-style chat messages."""
    if not isinstance(raw, list):
        raise RecordError(f"{where}: expected a list of chat messages, got {type(raw).__name__}")
    chat = ChatBuilder()
    for i, m in enumerate(raw):
        chat.openai(m, f"{where}[{i}]")
    return chat


def normalise(messages: list[Message]) -> tuple[Message, ...]:
    """Three alternating roles: a system message after the first becomes user text, a conversation that opens
    with the assistant (a greeting) gets an empty user message before it, consecutive roles are joined."""
    out: list[Message] = []
    for i, m in enumerate(messages):
        if m.role == "system" and i > 0:
            m = Message(role="user", content=m.content)
        if m.role == "assistant" and not any(x.role == "user" for x in out):
            out.append(Message(role="user", content=""))
        out.append(m)
    return join_roles(out)


def prompt_or_skip(messages: list[Message]) -> tuple[Message, ...] | Skip:
    """The call's prompt, or a Skip when it is no prompt the schema can hold (empty, ends with the assistant)."""
    prompt = normalise(messages)
    try:
        check_prompt_roles(list(prompt))
    except ValueError:
        return Skip("prompt does not end with a user or tool message (or has none)")
    return prompt
