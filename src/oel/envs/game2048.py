"""2048-v0-3x3 from TextArena 0.7.4: slide the tiles of a 3x3 board, merging equal ones.

Why this game: four answers, a board of nine numbers, and some of a good policy is a prior a small
model can carry (keep the big tiles in a corner: prefer two directions), while which moves are
legal depends on the board.

The rules are TextArena's, reproduced here in a small pure simulator (`slide`, `spawn_outcomes`,
`completion`) that a test pins against the real game's `_apply_move` and scores: a move that does
not change the board is an invalid move (forgiven once in a row, like every game here); after a
move a 2 (90%) or a 4 (10%) appears on a uniformly chosen empty cell; the game is won on a tile of
`g2048_target` and lost when no move is left. The game's own score for an unfinished game is
TextArena's completion: 0.5 * score / (1.5 * the least score that builds the target) + 0.5 *
largest tile / target.

The oracle (measurement only): an expectimax over the true board, averaging over every spawn
exactly, maximising the game's own score at the end of the episode (our turn cap). It is EXACT
when at most `EXPECTIMAX_DEPTH` answers are left, and depth-limited otherwise: at that depth the
completion so far stands for the value (as if the episode ended there). ok = good = the best move
by that value; invalid = a move that does not change the board.

Settings: the 3x3 board of TextArena's `2048-v0-3x3`; its target is 2048, which no episode of a
few turns reaches (passing needs a board summing to the target, and a turn adds at most 4), so
only the completion score moves; `g2048_target=16` or `32` makes passing possible in about 10 or
20 turns. The rules text says nothing of the strategy, so it is shown (`hide_rules=false`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any

import textarena as ta

from oel.envs import EnvConfig
from oel.envs.answer_game import VALUE_TOLERANCE, REASON_INVALID, REASON_LOST, TextArenaAnswerGame

SIZE = 3
DIRECTIONS: tuple[str, ...] = ("Up", "Down", "Left", "Right")
ANSWERS: tuple[str, ...] = tuple(f"[{d}]" for d in DIRECTIONS)
KEY_ALIASES = {"w": "Up", "s": "Down", "a": "Left", "d": "Right"}
"""TextArena also reads W/A/S/D as the four directions."""
P_FOUR = 0.1
"""Chance that a spawned tile is a 4 (else a 2)."""
EXPECTIMAX_DEPTH = 3
"""Answers the oracle looks ahead: exact when no more are left, depth-limited beyond."""
RANDOM_EPISODES_PER_SEED = 8
"""Random play's reference: this many seeded random episodes on each held-out seed, when the
target can be reached at all within the turn cap (else it is exactly 0)."""
MAX_TILE_PER_TURN = 4
_ANSWER = re.compile(r"\s*(up|down|left|right|w|a|s|d)\s*", re.IGNORECASE)

Board = tuple[tuple[int, ...], ...]


def merge_line(line: Sequence[int]) -> tuple[list[int], int]:
    """Slide a line towards its start, merging equal neighbours once: (new line, points gained)."""
    tiles = [v for v in line if v]
    out: list[int] = []
    gained, i = 0, 0
    while i < len(tiles):
        if i + 1 < len(tiles) and tiles[i] == tiles[i + 1]:
            out.append(2 * tiles[i])
            gained += 2 * tiles[i]
            i += 2
        else:
            out.append(tiles[i])
            i += 1
    return out + [0] * (len(line) - len(out)), gained


def slide(board: Board, direction: str) -> tuple[Board, int]:
    """The board after sliding in `direction` (before the spawn), and the points gained."""
    n = len(board)
    grid = [list(r) for r in board]
    gained = 0
    for k in range(n):
        if direction in ("Left", "Right"):
            cells = [(k, c) for c in range(n)]
        else:
            cells = [(r, k) for r in range(n)]
        if direction in ("Right", "Down"):
            cells.reverse()
        line, g = merge_line([board[r][c] for r, c in cells])
        gained += g
        for (r, c), v in zip(cells, line):
            grid[r][c] = v
    return tuple(tuple(r) for r in grid), gained


def spawn_outcomes(board: Board) -> Iterator[tuple[Board, float]]:
    """Every board the spawn can make, with its chance."""
    empties = [(r, c) for r, row in enumerate(board) for c, v in enumerate(row) if v == 0]
    for r, c in empties:
        for tile, p in ((2, 1 - P_FOUR), (4, P_FOUR)):
            grid = [list(row) for row in board]
            grid[r][c] = tile
            yield tuple(tuple(row) for row in grid), p / len(empties)


def least_score(tile: int) -> int:
    """TextArena's `_min_score_to_reach_tile`: the points merged on the way to `tile`."""
    total = 0
    while tile > 2:
        total += tile
        tile //= 2
    return total


def completion(board: Board, score: int, target: int) -> float:
    """TextArena's score of a game in progress (1.0 once the target tile is on the board)."""
    top = max(max(r) for r in board)
    if top >= target:
        return 1.0
    return min(1.0, 0.5 * score / (1.5 * least_score(target)) + 0.5 * top / target)


def stuck(board: Board) -> bool:
    """No empty cell and no two equal neighbours: the game is lost."""
    n = len(board)
    if any(0 in r for r in board):
        return False
    return not any(board[r][c] == board[r + dr][c + dc] for r in range(n) for c in range(n)
                   for dr, dc in ((1, 0), (0, 1)) if r + dr < n and c + dc < n)


def move_values(board: Board, score: int, target: int, turns_left: int, errors: int, errors_allowed: int,
                depth: int = EXPECTIMAX_DEPTH) -> list[float]:
    """Each direction's expected final score (the game's own), best play afterwards, looking
    `min(depth, turns_left)` answers ahead (exact when `turns_left <= depth`)."""

    @cache
    def value(b: Board, s: int, left: int, errs: int, look: int) -> float:
        if left == 0 or look == 0:
            return completion(b, s, target)
        return max(q(b, s, left, errs, look, d) for d in DIRECTIONS)

    def q(b: Board, s: int, left: int, errs: int, look: int, direction: str) -> float:
        slid, gained = slide(b, direction)
        if slid == b:
            return value(b, s, left - 1, errs + 1, look - 1) if errs < errors_allowed else completion(b, s, target)
        total = 0.0
        for nxt, p in spawn_outcomes(slid):
            if max(max(r) for r in nxt) >= target:
                total += p
            elif stuck(nxt):
                total += p * completion(nxt, s + gained, target)
            else:
                total += p * value(nxt, s + gained, left - 1, 0, look - 1)
        return total

    look = min(depth, turns_left)
    return [q(board, score, turns_left, errors, look, d) for d in DIRECTIONS]


class Game2048Game(TextArenaAnswerGame):
    """2048-v0-3x3 (built unwrapped, as `2048-v0-3x3-raw`) with the target tile `g2048_target`."""

    env_id = "2048-v0-3x3-raw"
    game_name = "g2048"

    @property
    def hidden_description(self) -> str:  # type: ignore[override]
        return (f"You are playing a sliding-tile game on a 3x3 board; the aim is a tile of {self.config.g2048_target}. "
                "Each turn, answer with one direction in square brackets: [Up], [Down], [Left] or [Right].")

    def _make_textarena_env(self) -> Any:
        return ta.make(self.env_id, target_tile=self.config.g2048_target)

    def rules_text(self) -> str:
        return (f"You are playing 2048 on a {SIZE}x{SIZE} board. Your goal is to reach a {self.config.g2048_target} "
                "tile by sliding identical numbers together!\n"
                "Valid moves: [Up], [Down], [Left], [Right]. Tiles combine when they collide, doubling their value.\n")

    def canonical(self, content: str) -> str | None:
        m = _ANSWER.fullmatch(content)
        if m is None:
            return None
        word = m.group(1).lower()
        return f"[{KEY_ALIASES.get(word, word.capitalize())}]"

    def answers(self) -> tuple[str, ...]:
        return ANSWERS

    def board(self) -> Board:
        return tuple(tuple(r) for r in self.textarena_env.state.game_state["board"])

    def score(self) -> int:
        return int(self.textarena_env.state.game_state["score"])

    def answer_labels(self, answers: Sequence[str]) -> tuple[list[float], tuple[bool, ...], tuple[bool, ...]]:
        state, board = self.textarena_env.state, self.board()
        by_direction = dict(zip(DIRECTIONS, move_values(
            board, self.score(), self.config.g2048_target, self.config.max_turns - self.turns, state.error_count,
            state.error_allowance)))
        values = [by_direction[a.strip("[]")] for a in answers]
        best = max(values)
        invalid = tuple(slide(board, a.strip("[]"))[0] == board for a in answers)
        return values, tuple(v >= best - VALUE_TOLERANCE for v in values), invalid

    def reference_answer(self, rng: random.Random) -> str:
        """A direction that changes the board, uniform among them."""
        board = self.board()
        return rng.choice([a for a in ANSWERS if slide(board, a.strip("[]"))[0] != board] or list(ANSWERS))

    def outcome_text(self, passed: bool, reward: float) -> str:
        turns, target = self._turns_text(), self.config.g2048_target
        top = max(max(r) for r in self.board())
        tail = f" Largest tile {top}, score {self.score()}, game score {reward:.3f}."
        if passed:
            return f"Success: you made a {target} tile in {turns}."
        if self.end_reason == REASON_INVALID:
            return (f"Failure: {self.config.invalid_moves_tolerated + 1} moves in a row that did not change the board "
                    f"(or were no move) ended the game after {turns}.{tail}")
        if self.end_reason == REASON_LOST:
            return f"Failure: the board filled up with no move left after {turns}.{tail}"
        return f"Failure: the turn limit ({self.config.max_turns} turns) was reached before a {target} tile.{tail}"

    @classmethod
    def random_pass_rate(cls, config: EnvConfig) -> float:
        """Exactly 0 when the target cannot be built within the turn cap (the board starts with at
        most 8 and a turn adds at most 4); else a seeded simulation of the real game, uniform
        answers, RANDOM_EPISODES_PER_SEED episodes on each held-out seed."""
        if 2 * MAX_TILE_PER_TURN + MAX_TILE_PER_TURN * config.max_turns < config.g2048_target:
            return 0.0
        return cls.simulated_pass_rate(config, RANDOM_EPISODES_PER_SEED, uniform=True)


__all__ = ["Game2048Game", "ANSWERS", "DIRECTIONS", "Board", "merge_line", "slide", "spawn_outcomes", "completion",
           "stuck", "least_score", "move_values", "EXPECTIMAX_DEPTH"]
