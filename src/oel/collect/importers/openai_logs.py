"""OpenAI's own files: chat logs (`{"messages": [...]}` per line), Responses API objects, Batch output.

- chat: one whole conversation per line, optional `id`, `env_id`, `seed`, `model_id`, `outcome`,
  `passed` (https://platform.openai.com/docs/api-reference/chat). Every assistant message is a call
  whose prompt is what precedes it; an assistant message before any user message (a greeting) is
  context, not a call.
- responses: a Responses API response object (`object: "response"`, `output[]` items) with the
  request's `input` (and `instructions`) kept beside it, as a client logs `{**request, **response}`
  (https://platform.openai.com/docs/api-reference/responses). A record that only names its
  `previous_response_id` has its earlier turns on OpenAI's servers and is refused by name.
- batch: a Batch API output line (`custom_id`, `response.body` = a chat completion); its prompt is
  the request of the same `custom_id` in the batch's input file, given with `--batch-input`
  (https://platform.openai.com/docs/guides/batch).
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
    boolean,
    chat_messages,
    normalise,
    prompt_or_skip,
    seconds,
    text_of,
    tokens,
    tool_uses,
)

Item = Call | Skip


def response_message(raw: object, chat: ChatBuilder) -> bool:
    """Add the assistant's answer in an OpenAI chat completion, a message or plain text; False if none."""
    if isinstance(raw, str):
        chat.assistant(raw)
        return True
    if isinstance(raw, list):
        return bool(raw) and response_message(raw[0], chat)
    if not isinstance(raw, Mapping):
        return False
    if "choices" in raw:
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            return False
        first = choices[0]
        return response_message(first.get("message", first.get("text")), chat)
    if "output" in raw and isinstance(raw["output"], list):
        return responses_output(raw["output"], chat)
    if any(k in raw for k in ("role", "content", "tool_calls", "function_call")):
        chat.assistant(text_of(raw.get("content")), tool_uses(raw.get("tool_calls") or raw.get("function_call")))
        return True
    return False


# ---- the Responses API's items ------------------------------------------------------------------


def responses_input(raw: object, chat: ChatBuilder, instructions: object = None) -> None:
    """A Responses API `input` (text or items: messages, function_call, function_call_output) into `chat`."""
    if isinstance(instructions, str) and instructions:
        chat.add("system", instructions)
    if isinstance(raw, str):
        chat.add("user", raw)
        return
    if not isinstance(raw, list):
        raise RecordError(f"input: expected text or a list of items, got {type(raw).__name__}")
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise RecordError(f"input[{i}]: expected an item object, got {type(item).__name__}")
        kind = item.get("type", "message")
        if kind == "function_call":
            chat.assistant("", tool_uses([{"name": item.get("name"), "arguments": item.get("arguments", ""),
                                           "id": item.get("call_id")}]))
        elif kind == "function_call_output":
            chat.tool(text_of(item.get("output")), call_id=item.get("call_id"))
        elif kind == "message":
            chat.openai({"role": item.get("role"), "content": item.get("content")}, f"input[{i}]")


def responses_output(items: list[Any], chat: ChatBuilder) -> bool:
    """The answer of a Responses API `output[]`: its message text and function calls as one assistant turn."""
    texts, calls = [], []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        if item.get("type") == "message":
            texts.append(text_of(item.get("content")))
        elif item.get("type") == "function_call":
            calls.append({"name": item.get("name"), "arguments": item.get("arguments", ""), "id": item.get("call_id")})
    if not texts and not calls:
        return False
    chat.assistant("\n".join(texts), tool_uses(calls))
    return True


def responses_records(obj: Mapping[str, Any], lineno: int) -> Iterator[Item]:
    if obj.get("status") not in (None, "completed"):
        yield Skip(f"response not completed (status {obj.get('status')!r})")
        return
    if "input" not in obj:
        reason = " (its earlier turns are on OpenAI's servers: log the whole input)" \
            if obj.get("previous_response_id") else ""
        yield Skip(f"response without its request's input{reason}")
        return
    chat = ChatBuilder()
    responses_input(obj["input"], chat, obj.get("instructions"))
    prompt = prompt_or_skip(chat.messages)
    if isinstance(prompt, Skip):
        yield prompt
        return
    if not responses_output(obj.get("output") or [], chat):
        yield Skip("response without output text or function calls")
        return
    usage = obj.get("usage") if isinstance(obj.get("usage"), Mapping) else {}
    group = obj.get("conversation") or obj.get("previous_response_id")
    yield Call(prompt, chat.messages[-1].content, None if group is None else str(group),
               seconds(obj.get("created_at")), str(obj.get("model") or "unknown"), tokens(usage.get("input_tokens")),
               tokens(usage.get("output_tokens")))


# ---- chat logs ------------------------------------------------------------------------------------


def chat_records(obj: Mapping[str, Any], lineno: int) -> Iterator[Item]:
    """One conversation per record: every assistant message after a user message is a call."""
    msgs = list(normalise(chat_messages(obj.get("messages"), "messages").messages))
    opening = next((k for k, m in enumerate(msgs) if m.role == "user" and m.content), len(msgs))
    calls = [k for k, m in enumerate(msgs) if m.role == "assistant" and k > opening]
    boolean(obj.get("passed"), "passed")
    if not calls:
        yield Skip("no assistant message: nothing the model said")
        return
    outcome = obj.get("outcome") or (msgs[-1].content if msgs[-1].role == "user" else None)
    for k in calls:
        prompt = prompt_or_skip(msgs[:k])
        if isinstance(prompt, Skip):
            raise RecordError(f"messages[{k}]: {prompt.kind}")
        yield Call(prompt, msgs[k].content, f"line:{lineno}", float(k), str(obj.get("model_id") or "unknown"),
                   outcome=str(outcome) if outcome else None)


# ---- Batch output -----------------------------------------------------------------------------------


def batch_records(obj: Mapping[str, Any], lineno: int, requests: Mapping[str, Any] | None) -> Iterator[Item]:
    """A Batch output line; `requests` maps custom_id -> the input file's request body."""
    response = obj.get("response") if isinstance(obj.get("response"), Mapping) else None
    if obj.get("error") or response is None or response.get("status_code") != 200:
        status = response.get("status_code") if response else None
        yield Skip(f"failed batch request (status_code {status!r})")
        return
    if requests is None:
        raise RecordError("a Batch output line holds the answer only: give the batch's input file "
                          "with --batch-input")
    request = requests.get(str(obj.get("custom_id")))
    if request is None:
        raise RecordError(f"custom_id {obj.get('custom_id')!r:.60}: not in the --batch-input file")
    body = response.get("body") if isinstance(response.get("body"), Mapping) else {}
    chat = chat_messages(request.get("messages"), "messages")
    prompt = prompt_or_skip(chat.messages)
    if isinstance(prompt, Skip):
        yield prompt
        return
    if not response_message(body, chat):
        yield Skip("batch response without a message")
        return
    usage = body.get("usage") if isinstance(body.get("usage"), Mapping) else {}
    yield Call(prompt, chat.messages[-1].content, None, seconds(body.get("created")),
               str(body.get("model") or request.get("model") or "unknown"), tokens(usage.get("prompt_tokens")),
               tokens(usage.get("completion_tokens")))


def batch_requests(lines: Iterator[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
    """custom_id -> request body of a Batch input file's lines (`custom_id`, `body`)."""
    out = {}
    for lineno, obj in lines:
        body = obj.get("body")
        if not isinstance(body, Mapping) or "custom_id" not in obj:
            raise RecordError(f"line {lineno}: expected a Batch input line (custom_id, method, url, body), got "
                              f"{json.dumps(sorted(obj))[:80]}")
        out[str(obj["custom_id"])] = body
    return out
