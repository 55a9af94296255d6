"""Tool calls and tool results as chat text: the one convention the log importers and `oel serve` share.

The trajectory schema has three roles (system, user, assistant), so a tool call the model made is
written into its answer as `<tool_call>{"name": ..., "arguments": ...}</tool_call>` (it is what the
model said) and a tool's result, the environment's answer, into a user message as
`<tool_result name="...">...</tool_result>`. The server renders a request's tool messages the same
way before the model reads them, and reads `<tool_call>` blocks in what the model wrote back into
OpenAI `tool_calls`, so a conversation looks the same whether it was served, gatewayed or imported.

Arguments are what the model wrote: a JSON text stays as written when it is valid JSON; anything
else (an empty string, JSON cut off mid-stream) is kept verbatim as a JSON string, so the rendered
call is always valid JSON and nothing the model wrote is lost.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from oel.trajectory import Message

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_TOOL_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: the tool's name and its arguments as JSON text (OpenAI's wire form)."""

    name: str
    arguments: str


def arguments_json(arguments: object) -> str:
    """Arguments as a JSON value's text: valid JSON text as written, an object serialised, anything else
    (empty, truncated, not JSON) as a JSON string holding it verbatim."""
    if isinstance(arguments, str):
        try:
            json.loads(arguments)
        except ValueError:
            return json.dumps(arguments, ensure_ascii=False)
        return arguments.strip()
    return json.dumps(arguments, ensure_ascii=False)


def render_tool_call(name: object, arguments: object) -> str:
    """A tool call as the model's words; always valid JSON between the tags."""
    return (f'{TOOL_CALL_OPEN}{{"name": {json.dumps(str(name), ensure_ascii=False)}, '
            f'"arguments": {arguments_json(arguments)}}}{TOOL_CALL_CLOSE}')


def render_tool_result(name: object, content: str) -> str:
    """A tool's result as the environment's answer, labelled with the tool's name when it is known."""
    label = f" name={json.dumps(str(name), ensure_ascii=False)}" if name else ""
    return f"<tool_result{label}>{content}</tool_result>"


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """(the text outside the calls, the calls) of a model's answer; a block that is not a JSON object with
    a string `name` stays in the text (the model wrote something else than a call)."""
    calls: list[ToolCall] = []
    kept: list[str] = []
    at = 0
    for match in _TOOL_CALL.finditer(text):
        try:
            obj = json.loads(match.group(1))
        except ValueError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            continue
        args = obj.get("arguments", {})
        calls.append(ToolCall(obj["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)))
        kept.append(text[at:match.start()])
        at = match.end()
    kept.append(text[at:])
    return "".join(kept).strip() if calls else text, calls


def join_roles(messages: list[Message]) -> tuple[Message, ...]:
    """Consecutive messages of one role joined (a tool result and the user's next words are one reply)."""
    out: list[Message] = []
    for m in messages:
        if out and out[-1].role == m.role:
            out[-1] = Message(role=m.role, content=f"{out[-1].content}\n\n{m.content}")
        else:
            out.append(m)
    return tuple(out)
