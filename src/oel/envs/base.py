"""The environment protocol: what oel needs from any multi-turn text environment.

An environment is played one episode at a time: `reset(seed)` returns the first
observation text; each `step(response)` takes the model's RAW response (the environment
parses its own action from it), and returns the feedback text, whether the episode is
over, the next observation, and -- at the end -- a textual outcome summary. The pass
flag and reward are for evaluation only; learning reads text.

Plug in your own environment by implementing this protocol (see docs/environments.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class StepResult:
    """What one model turn did to the environment."""

    feedback: str
    """The environment's textual reply to this response (shown to the extractor)."""
    done: bool
    observation: str = ""
    """What the model sees at its next turn; empty when `done`."""
    action: str | None = None
    """The action the environment executed; None when the response held no valid action."""
    outcome: str = ""
    """When `done`: success or failure, and why, as text."""
    passed: bool = False
    """When `done`: whether the episode counts as solved (evaluation only)."""
    reward: float | None = None


@runtime_checkable
class TextEnv(Protocol):
    """A multi-turn text environment; one instance plays one episode at a time."""

    env_id: str

    def reset(self, seed: int) -> str:
        """Start the episode for `seed` (same seed -> same episode); return the first observation."""
        ...

    def step(self, response: str) -> StepResult:
        """Apply the model's raw response; return the feedback and, when done, the outcome."""
        ...
