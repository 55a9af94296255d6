"""Environments: the TextArena grid games of the paper, small-answer games, and the protocol for your own.

    from oel.envs import EnvConfig, make_env
    env = make_env(EnvConfig(game="frozenlake"))
    observation = env.reset(seed)
    result = env.step(model_response)      # -> StepResult(feedback, done, observation, ...)

`EnvConfig`'s defaults are the paper's settings (docs/method.md#environments). Besides the paper's grid games,
`game` selects TextArena single-player games whose answer each turn comes from a small set
(`oel.envs.answer_game`): `guess_number` (GuessTheNumber-v0), `blackjack` (Blackjack-v0), `hangman`
(Hangman-v0), `hanoi` (TowerOfHanoi-v0), `bandit` (Bandit-v0), `g2048` (2048-v0-3x3) and `minesweeper`
(Minesweeper-v0-small). TextArena is imported only when an environment is made, so config handling
stays cheap.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Literal

from oel.config import Config, cfg
from oel.envs.base import StepResult, TextEnv
from oel.errors import ConfigError

GameName = Literal["frozenlake", "sokoban", "guess_number", "blackjack", "hangman", "hanoi", "bandit",
                   "g2048", "minesweeper"]
MINESWEEPER_LAYOUT_LIMIT = 250_000
"""Most mine layouts the Minesweeper oracle enumerates at one state (5x5 with 5 mines: at most 20,349)."""
GRID_GAMES: tuple[str, ...] = ("frozenlake", "sokoban")
"""The paper's games: a board, four moves, the BFS solver."""
ANSWER_GAME_CLASSES: dict[str, str] = {
    "guess_number": "oel.envs.guess_number:GuessTheNumberGame",
    "blackjack": "oel.envs.blackjack:BlackjackGame",
    "hangman": "oel.envs.hangman:HangmanGame",
    "hanoi": "oel.envs.hanoi:TowerOfHanoiGame",
    "bandit": "oel.envs.bandit:BanditGame",
    "g2048": "oel.envs.game2048:Game2048Game",
    "minesweeper": "oel.envs.minesweeper:MinesweeperGame",
}
"""Each small-answer game's class (`module:Class`), imported only when the game is made."""
ANSWER_GAMES: tuple[str, ...] = tuple(ANSWER_GAME_CLASSES)
"""Games whose answer comes from a small set (`oel.envs.answer_game`)."""
GAMES: tuple[str, ...] = GRID_GAMES + ANSWER_GAMES


class EnvConfig(Config):
    """Which game to play and how; every default is the paper's setting."""

    game: GameName = cfg("frozenlake", "which game: frozenlake, sokoban, guess_number, blackjack, hangman, hanoi, "
                                       "bandit, g2048 or minesweeper")
    max_turns: int = cfg(5, "model turns per episode, invalid ones included; the episode ends after this many")
    strict_actions: bool = cfg(True, "only bracketed moves count ([up], [w], ...); false also accepts a bare "
                                     "direction word")
    invalid_moves_tolerated: int = cfg(1, "consecutive invalid moves forgiven with a warning; one more ends the game")
    frozenlake_size: int = cfg(3, "FrozenLake board side (start top-left, goal bottom-right)")
    frozenlake_holes: int = cfg(2, "number of holes on the FrozenLake board (maps are always solvable)")
    sokoban_size: int = cfg(6, "Sokoban room side (square room, walls included)")
    sokoban_boxes: int = cfg(1, "number of boxes (and targets) in the Sokoban room")
    hide_rules: bool = cfg(False, "small-answer games: a generic description instead of TextArena's rules text")
    guess_min: int = cfg(1, "guess_number: smallest possible secret number")
    guess_max: int = cfg(20, "guess_number: largest possible secret number")
    guess_band: int = cfg(0, "guess_number: the secret comes from a hidden band of this many numbers, one band per "
                             "deployment; 0 = the whole range")
    deployment: int = cfg(0, "which deployment: draws a variant's hidden fact (guess_band's band), which the model "
                             "is never told")
    blackjack_hands: int = cfg(1, "blackjack: hands per episode (each needs at least one turn; keep below max_turns)")
    hanoi_disks: int = cfg(3, "hanoi: disks to move from tower A to C (solving takes 2**disks - 1 turns)")
    g2048_target: int = cfg(2048, "g2048: the tile that wins (a power of 2; TextArena's 2048-v0-3x3 wants 2048)")
    minesweeper_size: int = cfg(5, "minesweeper: board side (TextArena's Minesweeper-v0-small: 5)")
    minesweeper_mines: int = cfg(5, "minesweeper: number of mines (placed after the first reveal, outside its 3x3)")

    def model_post_init(self, context: Any, /) -> None:
        if self.game not in GAMES:
            raise ConfigError(f"game: expected one of {', '.join(repr(g) for g in GAMES)}, got {self.game!r}")
        for name in ("max_turns", "frozenlake_size", "sokoban_boxes", "blackjack_hands", "hanoi_disks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.invalid_moves_tolerated < 0:
            raise ConfigError(f"invalid_moves_tolerated: must be >= 0, got {self.invalid_moves_tolerated}")
        free_cells = self.frozenlake_size**2 - 2
        if not 0 <= self.frozenlake_holes < free_cells:
            raise ConfigError(f"frozenlake_holes: must be in 0..{free_cells - 1} for size "
                              f"{self.frozenlake_size}, got {self.frozenlake_holes}")
        if self.guess_min < 0 or self.guess_max <= self.guess_min:
            raise ConfigError(f"guess_max: must exceed guess_min (>= 0), got {self.guess_min}..{self.guess_max}")
        if not 0 <= self.guess_band <= self.guess_max - self.guess_min + 1:
            raise ConfigError(f"guess_band: must be in 0..{self.guess_max - self.guess_min + 1} (the numbers "
                              f"{self.guess_min}..{self.guess_max}), got {self.guess_band}")
        if self.deployment < 0:
            raise ConfigError(f"deployment: must be >= 0, got {self.deployment}")
        if self.sokoban_size < 4:
            raise ConfigError(f"sokoban_size: must be at least 4 (walls take the border), got {self.sokoban_size}")
        if self.g2048_target < 4 or self.g2048_target & (self.g2048_target - 1):
            raise ConfigError(f"g2048_target: must be a power of 2, at least 4, got {self.g2048_target}")
        if self.minesweeper_size < 4:
            raise ConfigError(f"minesweeper_size: must be at least 4 (mines go outside a 3x3), "
                              f"got {self.minesweeper_size}")
        room = self.minesweeper_size**2 - 9
        if not 1 <= self.minesweeper_mines <= room:
            raise ConfigError(f"minesweeper_mines: must be in 1..{room} (the cells outside the first reveal's 3x3) "
                              f"for size {self.minesweeper_size}, got {self.minesweeper_mines}")
        layouts = math.comb(self.minesweeper_size**2 - 4, self.minesweeper_mines)
        if layouts > MINESWEEPER_LAYOUT_LIMIT:
            raise ConfigError(f"minesweeper_mines: the oracle enumerates every mine layout, at most "
                              f"{MINESWEEPER_LAYOUT_LIMIT}; {self.minesweeper_mines} mines on {self.minesweeper_size}x"
                              f"{self.minesweeper_size} can need {layouts}")


def answer_game_class(game: str) -> type:
    """The `TextArenaAnswerGame` subclass that plays `game` (one of ANSWER_GAMES)."""
    module, name = ANSWER_GAME_CLASSES[game].split(":")
    return getattr(importlib.import_module(module), name)


def make_env(config: EnvConfig) -> TextEnv:
    """A fresh environment for `config` (one instance plays one episode at a time)."""
    # The game modules are imported when a game is made, not at the top: each imports EnvConfig from here.
    if config.game in ANSWER_GAME_CLASSES:
        return answer_game_class(config.game)(config)
    from oel.envs.textarena_games import FrozenLakeGame, SokobanGame

    if config.game == "frozenlake":
        return FrozenLakeGame(config)
    return SokobanGame(config)


def is_grid_game(config: EnvConfig) -> bool:
    """True for the paper's board games (solver, four moves, the grid prompts)."""
    return config.game in GRID_GAMES


__all__ = ["EnvConfig", "GameName", "GAMES", "GRID_GAMES", "ANSWER_GAMES", "answer_game_class", "StepResult", "TextEnv",
           "make_env", "is_grid_game"]
