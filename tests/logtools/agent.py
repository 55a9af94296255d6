"""The agent every logging tool is run with: the conversations the tests expect back from each log.

Two sessions against `oel serve`: a shell helper in French that calls a tool, reads its result,
answers, then makes two calls at once (parallel tool calls); and a streamed chat of two turns. Then
one call the server refuses (a failed call). The text is non-ASCII on purpose (accents, emoji, CJK).
The server's model decides to call tools only where `TOOL_TURNS` says (the tiny random model writes
noise); every other answer is the tiny model's own text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

SYSTEM = "Tu es un assistant shell. Utilise l'outil run pour lancer des commandes."
ASK = "Combien de fichiers dans /srv/app ? 📁"
FOLLOW_UP = "Merci ! Montre a.txt et b.txt, s'il te plaît."
RESULTS = {"ls /srv/app": "a.txt\nb.txt", "cat a.txt": "héllo a ✓", "cat b.txt": "こんにちは b"}
TOOL_TURNS = {ASK: [{"cmd": "ls /srv/app"}], FOLLOW_UP: [{"cmd": "cat a.txt"}, {"cmd": "cat b.txt"}]}
"""The user message after which the model calls `run`, and with which arguments (several: in parallel)."""
HAIKU = "Écris un haïku sur la mer. 🌊"
AGAIN = "Encore un, en 日本語."
SHELL_SESSION, STREAM_SESSION = "sess-shell-é", "sess-stream"
RUN_TOOL = {"type": "function", "function": {"name": "run", "description": "Run a shell command.",
                                             "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}},
                                                            "required": ["cmd"]}}}
MAX_TOKENS = 12
REFUSED_MAX_TOKENS = 10_000
"""Over the server's max_tokens limit: the failed call (400)."""

Chat = Callable[..., dict[str, Any]]
"""chat(messages, *, session, stream=False, tools=None, max_tokens=MAX_TOKENS) -> the assistant message as a dict."""


def tool_call_text(arguments: list[dict[str, str]]) -> str:
    """What the server's model writes to call `run` with each of `arguments`: oel.tool_text's tags around compact
    JSON (a model spaces its JSON as it likes; the server returns the arguments re-serialised)."""
    return "".join("<tool_call>" + json.dumps({"name": "run", "arguments": a}, ensure_ascii=False, separators=(",", ":"))
                   + "</tool_call>" for a in arguments)


def _tool_results(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "tool", "tool_call_id": c["id"], "content": RESULTS[json.loads(c["function"]["arguments"])["cmd"]]}
            for c in message["tool_calls"]]


def shell_session(chat: Chat) -> list[dict[str, Any]]:
    """Four calls: tool call, answer, two parallel tool calls, answer. Returns the final history."""
    history: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}]
    for next_question in (FOLLOW_UP, None):
        called = chat(history, session=SHELL_SESSION, tools=[RUN_TOOL])
        history += [called, *_tool_results(called)]
        history.append(chat(history, session=SHELL_SESSION, tools=[RUN_TOOL]))
        if next_question:
            history.append({"role": "user", "content": next_question})
    return history


def stream_session(chat: Chat) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = [{"role": "user", "content": HAIKU}]
    history.append(chat(history, session=STREAM_SESSION, stream=True))
    history.append({"role": "user", "content": AGAIN})
    history.append(chat(history, session=STREAM_SESSION, stream=True))
    return history


def failed_call(chat: Chat) -> None:
    """One request the server refuses (max_tokens over its limit); the tool logs the failure."""
    try:
        chat([{"role": "user", "content": "Ceci échoue."}], session="sess-failed", max_tokens=REFUSED_MAX_TOKENS)
    except Exception:  # noqa: BLE001 - each client raises its own error type; the failure is what we want
        return
    raise AssertionError("the server answered a request it must refuse")


def play(chat: Chat) -> dict[str, list[dict[str, Any]]]:
    """Every conversation, in order; returns the histories the agent ended with (what the logs must give back)."""
    shell = shell_session(chat)
    stream = stream_session(chat)
    failed_call(chat)
    return {SHELL_SESSION: shell, STREAM_SESSION: stream}
