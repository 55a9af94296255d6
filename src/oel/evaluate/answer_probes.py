"""Probe states for the small-answer meter, played through the real game, labelled by its oracle.

Two sources, both through the REAL TextArena game so the observation text is exactly what a
policy would see:

* `played_probes(config, seeds, policy)`: every state of one episode per seed, played by a
  reference `policy` (a function of the game object; e.g. `consistent_guesser`). Cheap and
  diverse: what the screen uses before any model has played.
* `visited_probes(config, trajectories)`: every state a collected file's episodes reached,
  replayed from their seeds and answers (the observations are checked against the recorded
  ones): the policy's OWN states, as `oel meter visited=` does for the grid games.

Labels (`AnswerProbe.good/ok/invalid/value`) come from the game's oracle and are for
measurement only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from oel.envs import EnvConfig, make_env
from oel.envs.answer_game import VALUE_TOLERANCE, TextArenaAnswerGame
from oel.errors import ConfigError, DataError
from oel.evaluate.answer_meter import AnswerProbe
from oel.trajectory import Trajectory

Policy = Callable[[TextArenaAnswerGame, random.Random], str]


def label(game: TextArenaAnswerGame, key: str, seed: int) -> AnswerProbe:
    """The current state of `game` as a probe, every answer labelled by the game's oracle."""
    answers = game.answers()
    values, ok, invalid = game.answer_labels(answers)
    best = max(values)
    good = tuple(v >= best - VALUE_TOLERANCE for v in values)
    return AnswerProbe(key, seed, game.turns, game.observation(), answers, good, ok, invalid, tuple(values))


def played_probes(config: EnvConfig, seeds: Iterable[int], policy: Policy, *, rng_seed: int = 0) -> list[AnswerProbe]:
    """Every state of one episode per seed, played by `policy` (seeded, reproducible)."""
    game = _answer_game(config)
    rng = random.Random(rng_seed)
    out: list[AnswerProbe] = []
    for seed in seeds:
        game.reset(seed)
        while not game.done:
            out.append(label(game, f"seed{seed}", seed))
            game.step(policy(game, rng))
    return out


def visited_probes(config: EnvConfig, trajectories: Sequence[Trajectory]) -> list[AnswerProbe]:
    """Every state the recorded episodes reached, replayed from their seeds and answers."""
    game = _answer_game(config)
    out: list[AnswerProbe] = []
    for traj in trajectories:
        seed = traj.seed
        if seed is None:
            raise DataError(f"visited probes: trajectory {traj.id} records no seed")
        observation = game.reset(seed)
        for i, turn in enumerate(traj.turns):
            if turn.observation.strip() != observation.strip():
                raise DataError(f"visited probes: trajectory {traj.id} turn {i}: the replayed game shows another "
                                "observation (a different game setting or TextArena version?)")
            out.append(label(game, f"{traj.id}", seed))
            result = game.step(turn.response)
            if result.done:
                break
            observation = result.observation
    return out


def _answer_game(config: EnvConfig) -> TextArenaAnswerGame:
    game: Any = make_env(config)
    if not isinstance(game, TextArenaAnswerGame):
        raise ConfigError(f"env.game: {config.game!r} is a grid game; its meter is `oel meter` (oel.evaluate.meter)")
    return game


# ---- reference policies (measurement only) ---------------------------------------------------


def consistent_guesser(game: TextArenaAnswerGame, rng: random.Random) -> str:
    """GuessTheNumber: a number chosen uniformly among those that agree with every hint."""
    return f"[{rng.choice(game.player_state().candidates())}]"  # type: ignore[attr-defined]


def uniform_answer(game: TextArenaAnswerGame, rng: random.Random) -> str:
    """Any game: an answer chosen uniformly from the answer set."""
    return rng.choice(game.answers())


def game_reference(game: TextArenaAnswerGame, rng: random.Random) -> str:
    """Any game: its own reference player (`TextArenaAnswerGame.reference_answer`; uniform answers
    unless the game has a better-informed one, e.g. Hangman's letters some possible word contains)."""
    return game.reference_answer(rng)


def reference_policy(config: EnvConfig) -> Policy:
    """The policy whose states the held-out meter probes: a consistent guesser for GuessTheNumber
    (states with informative hints), every other game its own reference player (uniform answers
    unless the game defines a better-informed one)."""
    return consistent_guesser if config.game == "guess_number" else game_reference
