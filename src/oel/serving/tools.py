"""Tool calling in `oel serve` and `oel gateway`: a request's tools and tool messages as the model's text,
and the `<tool_call>` blocks of its answer as OpenAI `tool_calls`.

The model reads three roles (oel.tool_text): an earlier answer's tool calls are written into that
assistant message as `<tool_call>{...}</tool_call>`, a tool message becomes the user's
`<tool_result name="...">` (the name looked up from the call it answers), and the request's `tools`
are listed in the system prompt. What the model writes back in the same tags is returned as
`tool_calls` (finish_reason `tool_calls`), the rest as `content`: the convention of Qwen2.5's chat
template, which oel's default models were trained on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from oel.tool_text import ToolCall, join_roles, parse_tool_calls, render_tool_call, render_tool_result
from oel.trajectory import Message

TOOLS_PROMPT = ("You may call one or more of these tools. For each call, write "
                '<tool_call>{{"name": <tool name>, "arguments": <JSON object>}}</tool_call>.\n'
                "<tools>\n{tools}\n</tools>")
"""The system prompt's block that lists a request's tools (Qwen2.5's wording, shortened)."""
CALL_ID_HEX_CHARS = 24


def _tools_block(tools: Sequence[Any]) -> str:
    return TOOLS_PROMPT.format(tools="\n".join(json.dumps(t.model_dump(exclude_none=True), ensure_ascii=False)
                                               for t in tools))


def prompt_messages(messages: Sequence[Any], tools: Sequence[Any] | None) -> list[Message]:
    """A request's messages (protocol.ChatMessage) in the model's three roles, consecutive roles joined."""
    names: dict[str, str] = {}
    out: list[Message] = []
    for m in messages:
        text = m.text()
        if m.role == "assistant":
            calls = []
            for call in m.tool_calls or ():
                names[call.id] = call.function.name
                calls.append(render_tool_call(call.function.name, call.function.arguments))
            out.append(Message(role="assistant", content="\n".join([text, *calls] if text else calls)))
        elif m.role == "tool":
            out.append(Message(role="user", content=render_tool_result(m.name or names.get(m.tool_call_id or ""),
                                                                         text)))
        else:
            out.append(Message(role="system" if m.role == "developer" else m.role, content=text))
    if tools:
        block = _tools_block(tools)
        if out and out[0].role == "system":
            out[0] = Message(role="system", content=f"{out[0].content}\n\n{block}")
        else:
            out.insert(0, Message(role="system", content=block))
    return list(join_roles(out))


def answer_parts(text: str, finish_reason: str, read_calls: bool) -> tuple[str | None, list[tuple[str, ToolCall]],
                                                                           str]:
    """(content, [(call id, call)], finish_reason) of a generated text; calls only when `read_calls`."""
    if not read_calls:
        return text, [], finish_reason
    content, calls = parse_tool_calls(text)
    if not calls:
        return text, [], finish_reason
    return content or None, [(f"call_{uuid.uuid4().hex[:CALL_ID_HEX_CHARS]}", c) for c in calls], "tool_calls"


def echoed_text(text: str, read_calls: bool) -> str:
    """A generated answer as the client's next request will hold it: with calls read, its content and calls
    rendered as `prompt_messages` renders them (the model may have spaced its JSON otherwise)."""
    content, calls, _ = answer_parts(text, "stop", read_calls)
    if not calls:
        return text
    rendered = [render_tool_call(c.name, c.arguments) for _, c in calls]
    return "\n".join([content, *rendered] if content else rendered)
