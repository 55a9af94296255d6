"""The trajectory: the one record that flows from collection to extraction to consolidation.

A trajectory is one episode: for each model turn, the exact chat messages the model was
given, its raw response (thinking included), the action we parsed from it and the
environment's textual feedback; then the episode's outcome summary. The pass flag is kept
for evaluation only -- no learning stage reads it.

On disk: JSONL, one trajectory per line, validated on read (`file:line: what is wrong`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from oel.errors import DataError
from oel.io import append_jsonl, atomic_write_text, iter_jsonl, read_jsonl
from oel.validation import describe

SCHEMA_VERSION = 1

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    """One chat message, OpenAI style."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Role
    content: str


def check_prompt_roles(messages: list[Message]) -> None:
    """A prompt is [system?] user (assistant user)*: alternating, ending with the user."""
    if not messages:
        raise ValueError("prompt has no messages")
    body = messages[1:] if messages[0].role == "system" else messages
    if not body:
        raise ValueError("prompt has only a system message")
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m.role != want:
            pos = i + (len(messages) - len(body))
            raise ValueError(f"prompt message {pos} has role '{m.role}', expected '{want}' (roles must "
                             "alternate user/assistant)")
    if body[-1].role != "user":
        raise ValueError("prompt must end with a user message")


class Turn(BaseModel):
    """One model turn: what the model saw, what it said, what the environment answered."""

    model_config = ConfigDict(extra="forbid")
    prompt: list[Message] = Field(description="the exact messages given to the model for this turn")
    observation: str = Field(description="the environment's text at this turn (the part of the prompt that came "
                                         "from the env)")
    response: str = Field(description="the raw model response, thinking included")
    action: str | None = Field(default=None, description="the action sent to the environment; None if none was valid")
    feedback: str = Field(default="", description="the environment's textual reply to this turn")
    prompt_tokens: int = Field(default=0, ge=0)
    response_tokens: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _roles(self) -> "Turn":
        check_prompt_roles(self.prompt)
        return self


class Trajectory(BaseModel):
    """One episode. `id` is unique within a file; (env_id, seed, sample) identifies the episode."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = SCHEMA_VERSION
    id: str = Field(min_length=1)
    env_id: str
    seed: int
    sample: int = Field(default=0, ge=0, description="index of this episode among repeats of the same seed")
    model_id: str
    round: int = Field(default=0, ge=0)
    turns: list[Turn] = Field(min_length=1)
    outcome: str = Field(description="textual outcome summary (success/failure and why)")
    passed: bool = Field(description="evaluation only; never a training signal")
    reward: float | None = None
    source: Literal["collect", "import", "online"] = "collect"
    """collect: played by `oel collect`; import: `oel import-logs`; online: recorded by the gateway."""
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def num_response_tokens(self) -> int:
        return sum(t.response_tokens for t in self.turns)

    def messages(self) -> list[Message]:
        """The episode as one conversation: each turn's observation, response, and the outcome last."""
        out: list[Message] = []
        for t in self.turns:
            out.append(Message(role="user", content=t.observation))
            out.append(Message(role="assistant", content=t.response))
        return out


_MESSAGES = TypeAdapter(list[Message])


def parse_trajectory(obj: dict[str, Any]) -> Trajectory:
    """Validate one JSON object as a Trajectory; raises ValueError with the field's path."""
    try:
        return Trajectory.model_validate(obj)
    except ValidationError as e:
        raise ValueError(describe(e)) from None


def read_trajectories(path: str | os.PathLike, *, allow_empty: bool = False) -> list[Trajectory]:
    """Read a trajectory JSONL file; every problem is reported as `file:line: what is wrong`."""
    trajs = read_jsonl(path, parse_trajectory, allow_empty=allow_empty)
    seen: dict[str, int] = {}
    for i, t in enumerate(trajs):
        if t.id in seen:
            raise DataError(f"{path}: trajectory id '{t.id}' appears twice (records {seen[t.id] + 1} and {i + 1})")
        seen[t.id] = i
    return trajs


def append_trajectory(path: str | os.PathLike, traj: Trajectory) -> None:
    append_jsonl(path, traj.model_dump(mode="json"))


def write_trajectories(path: str | os.PathLike, trajs: Iterable[Trajectory], *, private: bool = False) -> None:
    """Write a whole file atomically (used by importers; collection appends instead).

    `private`: 0600 (and new folders 0700), for users' conversations (the online store's exports)."""
    import json

    lines = [json.dumps(t.model_dump(mode="json"), ensure_ascii=False) for t in trajs]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""), private=private)


@dataclass(frozen=True)
class Prefix:
    """A partial rollout: the conversation up to (not including) model response `turn`."""

    trajectory_id: str
    turn: int
    prompt: tuple[Message, ...]
    observation: str
    template: str | None = None
    """The prompt template the trajectory records it was played with (None: imported, or unknown)."""


def recorded_template(traj: Trajectory) -> str | None:
    """The name of the prompt template `traj` was collected with, if it records one."""
    record = traj.meta.get("prompt")
    name = record.get("name") if isinstance(record, dict) else None
    return name if isinstance(name, str) else None


def prefixes(trajs: Iterable[Trajectory]) -> list[Prefix]:
    """Every partial-rollout prefix of every trajectory: the consolidation dataset."""
    return [
        Prefix(t.id, i, tuple(turn.prompt), turn.observation, recorded_template(t))
        for t in trajs
        for i, turn in enumerate(t.turns)
    ]


def import_openai_messages(
    path: str | os.PathLike,
    *,
    env_id: str = "imported",
    model_id: str = "unknown",
) -> list[Trajectory]:
    """Convert OpenAI-style `{"messages": [...]}` JSONL logs into trajectories.

    Each assistant message is one turn; its prompt is every message before it, and the
    user message right after it is the environment's feedback. The outcome is the
    record's `outcome` field if present, else the last user message after the final
    response, else "unknown". `passed` comes from the record if present (else False:
    it is only used for evaluation).
    """
    out: list[Trajectory] = []
    for lineno, obj in iter_jsonl(path):
        try:
            out.append(_one_openai_record(obj, lineno, env_id=env_id, model_id=model_id))
        except (ValueError, TypeError, KeyError) as e:
            raise DataError(f"{path}:{lineno}: {' '.join(str(e).split())}") from None
    if not out:
        raise DataError(f"{path}:1: file is empty, expected at least one record")
    return out


def _one_openai_record(obj: dict[str, Any], lineno: int, *, env_id: str, model_id: str) -> Trajectory:
    if "messages" not in obj or not isinstance(obj["messages"], list):
        raise ValueError("missing field 'messages' (a list of {role, content})")
    try:
        msgs = _MESSAGES.validate_python(obj["messages"])
    except ValidationError as e:
        raise ValueError(f"messages{describe(e)}") from None
    turns: list[Turn] = []
    for k, m in enumerate(msgs):
        if m.role != "assistant":
            continue
        prompt = msgs[:k]
        nxt = msgs[k + 1] if k + 1 < len(msgs) and msgs[k + 1].role == "user" else None
        try:
            turns.append(Turn(prompt=prompt, observation=prompt[-1].content if prompt else "",
                              response=m.content, feedback=nxt.content if nxt else ""))
        except ValidationError as e:
            raise ValueError(f"messages[{k}]: {describe(e)}") from None
    if not turns:
        raise ValueError("no assistant message: nothing the model said")
    last_user_after = msgs[-1].content if msgs[-1].role == "user" else None
    outcome = obj.get("outcome") or last_user_after or "unknown"
    return Trajectory(
        id=str(obj.get("id", f"import-{lineno}")),
        env_id=str(obj.get("env_id", env_id)),
        seed=int(obj.get("seed", lineno)),
        model_id=str(obj.get("model_id", model_id)),
        turns=turns,
        outcome=str(outcome),
        passed=bool(obj.get("passed", False)),
        source="import",
    )
