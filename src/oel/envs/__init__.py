"""Environments: the TextArena grid games of the paper, and the protocol for your own.

    from oel.envs import EnvConfig, make_env
    env = make_env(EnvConfig(game="frozenlake"))
    observation = env.reset(seed)
    result = env.step(model_response)      # -> StepResult(feedback, done, observation, ...)

`EnvConfig`'s defaults are the paper's settings (SPEC §2). TextArena is imported only when
an environment is made, so config handling stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from oel.config import cfg
from oel.envs.base import StepResult, TextEnv
from oel.errors import ConfigError

GameName = Literal["frozenlake", "sokoban"]


@dataclass
class EnvConfig:
    """Which game to play and how; every default is the paper's setting."""

    game: GameName = cfg("frozenlake", "which grid game: 'frozenlake' (FrozenLake-v0-raw) or 'sokoban' (Sokoban-v0)")
    max_turns: int = cfg(5, "model turns per episode, invalid ones included; the episode ends after this many")
    strict_actions: bool = cfg(True, "only bracketed moves count ([up], [w], ...); false also accepts a bare direction word")
    invalid_moves_tolerated: int = cfg(1, "consecutive invalid moves forgiven with a warning; one more ends the game")
    frozenlake_size: int = cfg(3, "FrozenLake board side (start top-left, goal bottom-right)")
    frozenlake_holes: int = cfg(2, "number of holes on the FrozenLake board (maps are always solvable)")
    sokoban_size: int = cfg(6, "Sokoban room side (square room, walls included)")
    sokoban_boxes: int = cfg(1, "number of boxes (and targets) in the Sokoban room")

    def __post_init__(self) -> None:
        if self.game not in ("frozenlake", "sokoban"):
            raise ConfigError(f"game: expected 'frozenlake' or 'sokoban', got {self.game!r}")
        for name in ("max_turns", "frozenlake_size", "sokoban_boxes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.invalid_moves_tolerated < 0:
            raise ConfigError(f"invalid_moves_tolerated: must be >= 0, got {self.invalid_moves_tolerated}")
        free_cells = self.frozenlake_size**2 - 2
        if not 0 <= self.frozenlake_holes < free_cells:
            raise ConfigError(f"frozenlake_holes: must be in 0..{free_cells - 1} for size {self.frozenlake_size}, got {self.frozenlake_holes}")
        if self.sokoban_size < 4:
            raise ConfigError(f"sokoban_size: must be at least 4 (walls take the border), got {self.sokoban_size}")


def make_env(config: EnvConfig) -> TextEnv:
    """A fresh environment for `config` (one instance plays one episode at a time)."""
    from oel.envs.textarena_games import FrozenLakeGame, SokobanGame

    if config.game == "frozenlake":
        return FrozenLakeGame(config)
    return SokobanGame(config)


__all__ = ["EnvConfig", "GameName", "StepResult", "TextEnv", "make_env"]
