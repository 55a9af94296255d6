"""Minesweeper-v0-small from TextArena 0.7.4: reveal every cell of a 5x5 board without its 5 mines.

Why this game: the answer is a cell (25 of them), a revealed number constrains its neighbours, and
part of a good policy is a rule a lesson can state (a cell next to a 0 is safe; never answer a
revealed cell), while which cells are safe depends on the board.

TextArena's rules, as 0.7.4 plays them: the first reveal is always safe; the mines are placed only
then, uniformly among the cells outside the 3x3 square around it (TextArena draws cells until it
has `num_mines` distinct ones there: every such set is equally likely), and a 0 floods its
neighbours open. Revealing a mine is an INVALID move, not the end: forgiven once in a row like any
invalid move (the cell stays hidden, and the reply names the mine); a second invalid move in a row
ends the game. Pass = every safe cell revealed (the game's own success); an unfinished game scores
TextArena's share of the safe cells revealed beyond the first reveal's area.

The oracle (measurement only): ok = an unrevealed cell that is safe in the TRUE layout; value = the
cell's chance of being safe given what the player was told (exact: the share of every mine layout
consistent with the first reveal, the numbers shown and the mines hit; 0 for a revealed cell,
which the game refuses); invalid = a revealed cell. Before the first reveal every cell is safe.

Settings: `minesweeper_size` (5) and `minesweeper_mines` (5); TextArena's own turn limit is set to
our `max_turns`. The oracle enumerates layouts, so `EnvConfig` bounds their number. The rules text
gives no strategy away, so it is shown (`hide_rules=false`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from math import comb
from typing import Any

import textarena as ta

from oel.envs import MINESWEEPER_LAYOUT_LIMIT, EnvConfig
from oel.envs.answer_game import REASON_INVALID, REASON_LOST, REASON_TURN_LIMIT, REASON_WON, TextArenaAnswerGame
from oel.errors import ConfigError

_CELL = re.compile(r"\s*(\d+)\s*[, ]\s*(\d+)\s*")
_MINE_HIT = re.compile(r"You hit a mine at \((\d+), (\d+)\)")
MINE_REASON = "Invalid Move: You hit a mine"
RANDOM_EPISODES_PER_SEED = 8
"""Random play's reference: this many seeded random episodes on each held-out seed."""

Cell = tuple[int, int]


def neighbours(cell: Cell, size: int) -> list[Cell]:
    r, c = cell
    return [(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
            if (dr or dc) and 0 <= r + dr < size and 0 <= c + dc < size]


def safe_zone(first: Cell, size: int) -> set[Cell]:
    """The 3x3 square around the first reveal, where TextArena places no mine."""
    return {first, *neighbours(first, size)}


@dataclass(frozen=True)
class MinesweeperView:
    """What the player knows: the first reveal, the numbers shown, the mines hit."""

    size: int
    mines: int
    first: Cell | None
    shown: dict[Cell, int]
    """Every revealed cell and its number."""
    mines_hit: frozenset[Cell]

    def mine_layouts(self, limit: int) -> list[frozenset[Cell]]:
        """Every placement of the mines consistent with what was shown (refused past `limit`)."""
        assert self.first is not None
        zone = safe_zone(self.first, self.size)
        unknown = [(r, c) for r in range(self.size) for c in range(self.size)
                   if (r, c) not in zone and (r, c) not in self.shown and (r, c) not in self.mines_hit]
        bit = {cell: 1 << i for i, cell in enumerate(unknown)}
        hit = set(self.mines_hit)
        rules = []
        for cell, number in self.shown.items():
            around = neighbours(cell, self.size)
            mask = sum(bit.get(n, 0) for n in around)
            rules.append((mask, number - sum(n in hit for n in around)))
        need = self.mines - len(hit)
        if need < 0 or not 0 <= need <= len(unknown):
            return []
        if comb(len(unknown), need) > limit:
            raise ConfigError(f"minesweeper: {comb(len(unknown), need)} mine layouts to enumerate, over the oracle's "
                              f"limit {limit}; use a smaller minesweeper_size or minesweeper_mines")
        out = []
        for combo in combinations(unknown, need):
            placed = sum(bit[c] for c in combo)
            if all((placed & mask).bit_count() == want for mask, want in rules):
                out.append(frozenset(combo) | self.mines_hit)
        return out

    def safe_chances(self, limit: int) -> dict[Cell, float]:
        """Each cell's chance of holding no mine, given what was shown (every layout equally likely)."""
        cells = [(r, c) for r in range(self.size) for c in range(self.size)]
        if self.first is None:
            return {cell: 1.0 for cell in cells}  # the first reveal is always safe
        layouts = self.mine_layouts(limit)
        if not layouts:
            raise ValueError("minesweeper: no mine layout fits what the board shows")
        return {cell: sum(cell not in lay for lay in layouts) / len(layouts) for cell in cells}


class MinesweeperGame(TextArenaAnswerGame):
    """Minesweeper-v0-small (built unwrapped, as `Minesweeper-v0-small-raw`), size and mines from the config."""

    env_id = "Minesweeper-v0-small-raw"
    game_name = "minesweeper"

    @property
    def hidden_description(self) -> str:  # type: ignore[override]
        c = self.config
        return (f"You are playing a game on a {c.minesweeper_size}x{c.minesweeper_size} board hiding "
                f"{c.minesweeper_mines} mines. Each turn, answer with a cell to reveal in square brackets, row then "
                "column, for example [2 3].")

    def _make_textarena_env(self) -> Any:
        c = self.config
        return ta.make(self.env_id, rows=c.minesweeper_size, cols=c.minesweeper_size, num_mines=c.minesweeper_mines,
                       max_turns=c.max_turns)

    def rules_text(self) -> str:
        return (
            "You are playing the Minesweeper game.\nThe objective of the game is to reveal all cells that do not "
            "contain mines.\nTo make a move, simply specify the row and column coordinates you want to reveal using "
            "the format:\n- `[row col]`: Reveal the cell at the specified row and column.\nFor example:\n"
            "- `[3 2]` to reveal the cell in Row 3, Column 2.\n- `[5 6]` to reveal the cell in Row 5, Column 6.\n"
            "On your first move, you will reveal an area around the cell you choose to ensure a safe start.\n"
            "The current board layout is shown below. Cells that are unrevealed are represented by a dot ('.'), "
            "revealed numbers show the count of adjacent mines.\nBe mindful not to choose already revealed cells.\n"
            "Here is the current board layout:\n")

    def canonical(self, content: str) -> str | None:
        """`' 2, 3 '` -> `'[2 3]'` (the game reads one space; out-of-range cells are the game's to refuse)."""
        m = _CELL.fullmatch(content)
        return f"[{int(m.group(1))} {int(m.group(2))}]" if m else None

    def answers(self) -> tuple[str, ...]:
        n = self.config.minesweeper_size
        return tuple(f"[{r} {c}]" for r in range(n) for c in range(n))

    def view(self) -> MinesweeperView:
        """The board as the player sees it."""
        env, n = self.textarena_env, self.config.minesweeper_size
        shown = {(r, c): env.grid[r][c] for r in range(n) for c in range(n) if env.revealed[r][c]}
        first = None if env.first_move else env.initial_move_pos
        hit = frozenset((int(r), int(c)) for r, c in _MINE_HIT.findall(self.observation()))
        return MinesweeperView(n, self.config.minesweeper_mines, first, shown, hit)

    def answer_labels(self, answers: Sequence[str]) -> tuple[list[float], tuple[bool, ...], tuple[bool, ...]]:
        view, env = self.view(), self.textarena_env
        chances = view.safe_chances(MINESWEEPER_LAYOUT_LIMIT)
        cells = [tuple(int(x) for x in a.strip("[]").split()) for a in answers]
        revealed = tuple(cell in view.shown for cell in cells)
        values = [0.0 if shown else chances[cell] for cell, shown in zip(cells, revealed)]
        safe = [env.first_move or env.grid[r][c] != -1 for r, c in cells]
        return values, tuple(s and not shown for s, shown in zip(safe, revealed)), revealed

    def reference_answer(self, rng: random.Random) -> str:
        """An unrevealed cell, uniform among them."""
        shown = self.view().shown
        return rng.choice([a for a in self.answers() if tuple(int(x) for x in a.strip("[]").split()) not in shown])

    def classify(self, reason: str, reward: float) -> str:
        if reason.startswith("Congratulations"):
            return REASON_WON
        if reason.startswith(MINE_REASON):
            return REASON_LOST
        if reason.startswith("Invalid Move"):
            return REASON_INVALID
        return REASON_TURN_LIMIT if reason.startswith("The turn limit") else REASON_LOST

    def outcome_text(self, passed: bool, reward: float) -> str:
        turns = self._turns_text()
        if passed:
            return f"Success: you revealed every safe cell in {turns}."
        hit = sorted(self.view().mines_hit)
        tail = (f" You revealed {reward:.0%} of the safe cells beyond the first area."
                + (f" Mines you hit: {', '.join(f'({r}, {c})' for r, c in hit)}." if hit else ""))
        why = (self.textarena_env.state.game_info[0].get("reason") or "").removeprefix("Invalid Move:").strip()
        if self.end_reason == REASON_LOST:
            return f"Failure: a second invalid move in a row ended the game after {turns}: {why}{tail}"
        if self.end_reason == REASON_INVALID:
            return (f"Failure: {self.config.invalid_moves_tolerated + 1} invalid moves in a row ended the game after "
                    f"{turns} (last one: {why}).{tail}")
        return (f"Failure: the turn limit ({self.config.max_turns} turns) was reached "
                f"before every safe cell was revealed.{tail}")

    @classmethod
    def random_pass_rate(cls, config: EnvConfig) -> float:
        """A seeded simulation of the real game: a cell drawn uniformly among the unrevealed ones,
        RANDOM_EPISODES_PER_SEED episodes on each held-out seed."""
        return cls.simulated_pass_rate(config, RANDOM_EPISODES_PER_SEED)

__all__ = ["MinesweeperGame", "MinesweeperView", "neighbours", "safe_zone", "MINE_REASON"]
