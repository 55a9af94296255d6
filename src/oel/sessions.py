"""A deployed agent's chat exchanges -> conversations -> one trajectory per conversation.

The gateway records one *exchange* per chat request: the messages the agent sent and the
model's response. These pure functions say what the exchanges mean; the store only applies them.

- **Stitching** (an agent that sends no session id): a request whose messages start with an
  earlier request's messages followed by that request's response continues that earlier
  conversation. Requests are compared by keys (a hash of every prefix that ends with an
  assistant message), so the store can find the conversation with one indexed lookup. When
  several exchanges match, the longest match wins, then one that is its conversation's latest
  exchange, then the oldest conversation: two agents whose histories are identical so far are
  indistinguishable, and this order keeps them apart whenever they alternate.
- **The path** (one session, named or stitched): agents retry a request, rewind to an earlier
  point, or rewrite their history (truncate, summarise). The trajectory follows the path the
  agent ended on, so that every turn's feedback is what the agent really answered next: a request
  identical to an earlier one replaces it (a retry), a request that continues an earlier exchange
  follows it (dropping the abandoned branch), and any other request follows the previous one.
- **Feedback**: for turn k it is the user message that follows response k in the next request
  on the path; if that request rewrote the history, its newest user message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from oel.trajectory import Message, Trajectory, Turn, check_prompt_roles
from oel.validation import error_text, first_error, location

ONLINE_ENV_ID = "online"
"""env_id of a trajectory stitched from a session that named no task."""
STITCHED_SOURCE = "online"
"""The Trajectory.source of trajectories the gateway stitched from exchanges."""
AUTO_SESSION_PREFIX = "auto-"
"""Names of stitched sessions (`auto-<n>`); reserved, so a client cannot name a session so."""
MAX_NAME_CHARS = 256
"""The longest client name, session id or idempotency key accepted."""


@dataclass(frozen=True)
class Exchange:
    """One chat request the gateway served: the messages it was sent and the model's answer."""

    messages: tuple[Message, ...]
    response: str
    model_id: str = "unknown"
    prompt_tokens: int = 0
    response_tokens: int = 0

    @property
    def tail(self) -> tuple[Message, ...]:
        """The conversation as the agent has it once it reads the response."""
        return (*self.messages, Message(role="assistant", content=self.response))


def parse_messages(raw: Iterable[Message | Mapping[str, Any]]) -> tuple[Message, ...]:
    """Validate a request's messages as a prompt; ValueError names the bad field (`messages[2].role: ...`)."""
    if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Iterable):
        raise ValueError("messages: expected a list of {role, content}")
    out = []
    for i, m in enumerate(raw):
        try:
            out.append(m if isinstance(m, Message) else Message.model_validate(m))
        except ValidationError as e:
            where = location(first_error(e)["loc"])
            raise ValueError(f"messages[{i}]{'.' + where if where else ''}: {error_text(first_error(e))}") from None
    try:
        check_prompt_roles(out)
    except ValueError as e:
        raise ValueError(f"messages: {e}") from None
    return tuple(out)


_json_string = json.encoder.encode_basestring
"""What json.dumps(ensure_ascii=False) writes for a string (its C encoder), without its per-call setup."""


def _message_bytes(m: Message) -> bytes:
    """One message, unambiguously delimited: JSON escapes every newline inside the content. The same bytes as
    `json.dumps([role, content], ensure_ascii=False)`, 5x faster (stored keys depend on them)."""
    return f"[{_json_string(m.role)}, {_json_string(m.content)}]\n".encode("utf-8")


def conversation_key(messages: Sequence[Message]) -> str:
    """A key that is equal for two message lists exactly when the lists are equal."""
    h = hashlib.sha256()
    for m in messages:
        h.update(_message_bytes(m))
    return h.hexdigest()


def tail_key(exchange: Exchange) -> str:
    """The key a request continuing `exchange` has among its prefix keys."""
    return conversation_key(exchange.tail)


def prefix_keys(messages: Sequence[Message]) -> list[str]:
    """The key of every prefix of `messages` that ends with an assistant message, longest first.

    One incremental hash: O(total length), however many turns the request carries.
    """
    h = hashlib.sha256()
    keys = []
    for m in messages:
        h.update(_message_bytes(m))
        if m.role == "assistant":
            keys.append(h.hexdigest())
    return keys[::-1]


@dataclass(frozen=True)
class Candidate:
    """An exchange a new request may continue: its conversation, its tail key, and whether it is the latest."""

    conversation: int
    """Lower is older (the order conversations began in)."""
    tail_key: str
    is_latest: bool


def choose_conversation(keys: Sequence[str], candidates: Iterable[Candidate]) -> int | None:
    """The conversation a request with prefix `keys` continues, or None for a new one.

    Longest match first, then a conversation's latest exchange over an earlier one (a retry or a
    rewind), then the oldest conversation.
    """
    rank = {k: i for i, k in enumerate(keys)}
    matching = [c for c in candidates if c.tail_key in rank]
    if not matching:
        return None
    return min(matching, key=lambda c: (rank[c.tail_key], not c.is_latest, c.conversation)).conversation


def stitch(exchanges: Sequence[Exchange]) -> list[list[int]]:
    """Group session-less exchanges (in arrival order) into conversations of exchange indices.

    The store does the same incrementally (exchanges of one client, open sessions only).
    """
    conversations: list[list[int]] = []
    by_tail: dict[str, list[tuple[int, int]]] = {}
    for i, ex in enumerate(exchanges):
        keys = prefix_keys(ex.messages)
        candidates = [Candidate(conv, key, conversations[conv][-1] == j)
                      for key in keys for conv, j in by_tail.get(key, [])]
        conv = choose_conversation(keys, candidates)
        if conv is None:
            conv = len(conversations)
            conversations.append([])
        conversations[conv].append(i)
        by_tail.setdefault(tail_key(ex), []).append((conv, i))
    return conversations


def _predecessor(j: int, ex: Exchange, pred: list[int | None], same_request: dict[str, int],
                 latest_tail: dict[str, int]) -> int | None:
    own = conversation_key(ex.messages)
    if own in same_request:
        return pred[same_request[own]]
    for key in prefix_keys(ex.messages):
        if key in latest_tail:
            return latest_tail[key]
    return j - 1 if j > 0 else None


def session_path(exchanges: Sequence[Exchange]) -> list[int]:
    """The indices of the exchanges on the path the agent ended on, first to last (see the module doc)."""
    if not exchanges:
        return []
    pred: list[int | None] = []
    same_request: dict[str, int] = {}
    latest_tail: dict[str, int] = {}
    for j, ex in enumerate(exchanges):
        pred.append(_predecessor(j, ex, pred, same_request, latest_tail))
        same_request[conversation_key(ex.messages)] = j
        latest_tail[tail_key(ex)] = j
    path: list[int] = []
    at: int | None = len(exchanges) - 1
    while at is not None:
        path.append(at)
        at = pred[at]
    return path[::-1]


def feedback(exchange: Exchange, following: Exchange | None) -> str:
    """What the agent answered `exchange`'s response with, read from its next request."""
    if following is None:
        return ""
    tail = exchange.tail
    msgs = following.messages
    if len(msgs) > len(tail) and msgs[: len(tail)] == tail:
        return msgs[len(tail)].content
    return msgs[-1].content


def session_turns(exchanges: Sequence[Exchange]) -> list[Turn]:
    """One Turn per exchange on the session's path, with its feedback."""
    return _turns([exchanges[i] for i in session_path(exchanges)])


def _turns(path: Sequence[Exchange]) -> list[Turn]:
    return [
        Turn(prompt=list(ex.messages), observation=ex.messages[-1].content, response=ex.response,
             feedback=feedback(ex, nxt), prompt_tokens=ex.prompt_tokens, response_tokens=ex.response_tokens)
        for ex, nxt in zip(path, [*path[1:], None])
    ]


def build_trajectory(
    exchanges: Sequence[Exchange],
    *,
    trajectory_id: str,
    outcome: str,
    passed: bool | None = None,
    env_id: str = ONLINE_ENV_ID,
    seed: int = 0,
    meta: Mapping[str, Any] | None = None,
) -> Trajectory:
    """A session's trajectory: its path's turns, the outcome the agent reported, the models that answered.

    `passed` None (not reported) is stored as False, as import_openai_messages does: it is read by
    evaluation only; `meta["online"]["passed_reported"]` keeps the difference.
    """
    if not exchanges:
        raise ValueError("a session with no exchange has no trajectory")
    path = [exchanges[i] for i in session_path(exchanges)]
    models = list(dict.fromkeys(ex.model_id for ex in path))
    online = {**(meta or {}), "passed_reported": passed is not None, "model_ids": models,
              "exchanges": len(exchanges), "turns_on_path": len(path)}
    return Trajectory(id=trajectory_id, env_id=env_id, seed=seed, model_id=models[0], turns=_turns(path),
                      outcome=outcome, passed=bool(passed), source=STITCHED_SOURCE, meta={"online": online})
