"""Scripted players for calibration: the BFS-optimal policy and the uniform-random policy.

Both play through the ordinary `TextEnv` interface (they answer with response strings such as
"[right]"), so whatever a model's episode goes through -- parsing, invalid-move rules, the turn
cap, the outcome text -- these go through too. The optimal policy needs the true board, which it
reads from the game object (`solver_state()`); it is a measuring stick, not a fair competitor.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

from oel.envs.base import StepResult, TextEnv
from oel.envs.solver import MOVES, optimal_actions

FALLBACK_RESPONSE = "[up]"
"""What the optimal policy answers when the map cannot be won any more (any move will do)."""


class Policy(Protocol):
    """Something that answers an observation with a response string."""

    def __call__(self, env: TextEnv, observation: str) -> str: ...


class OptimalPolicy:
    """Plays the first move of a shortest winning plan, recomputed from the true board every turn."""

    def __call__(self, env: TextEnv, observation: str) -> str:
        solver_state = getattr(env, "solver_state", None)
        if solver_state is None:
            raise TypeError(f"OptimalPolicy needs an environment with solver_state(); {type(env).__name__} has none")
        plan = optimal_actions(solver_state())
        return plan[0] if plan else FALLBACK_RESPONSE


class RandomPolicy:
    """Answers one of the four moves uniformly at random (its own seeded RNG, never the global one)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def __call__(self, env: TextEnv, observation: str) -> str:
        return self.rng.choice(list(MOVES))


@dataclass
class Episode:
    """One played episode: the seed, every response and step result, and how it ended."""

    seed: int
    responses: list[str] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.steps) and self.steps[-1].passed

    @property
    def outcome(self) -> str:
        return self.steps[-1].outcome if self.steps else ""


MAX_STEPS_GUARD = 1_000
"""Stops a runaway loop if an environment never reports done (a bug, not a game rule)."""


def play_episode(env: TextEnv, policy: Policy, seed: int) -> Episode:
    """Play one episode of `env` on map `seed` with `policy` until the environment says done."""
    episode = Episode(seed=seed)
    observation = env.reset(seed)
    for _ in range(MAX_STEPS_GUARD):
        response = policy(env, observation)
        result = env.step(response)
        episode.responses.append(response)
        episode.steps.append(result)
        if result.done:
            return episode
        observation = result.observation
    raise RuntimeError(f"{env.env_id}: seed {seed} not done after {MAX_STEPS_GUARD} steps")
