"""TowerOfHanoi-v0 from TextArena 0.7.4: move every disk from tower A to tower C.

Why this game: six answers at most (`[A C]`, ...), a state of three short lists, and a policy that
is one rule a lesson can state (the smallest disk moves every other turn, always the same way
round). Its deterministic moves make the oracle exact and cheap: a BFS over all 3**disks positions.

The oracle (measurement only): each move's value is minus the turns still needed to solve after
it (1 for the move itself plus the shortest solution from where it leads; an illegal move wastes
the turn: 1 plus the shortest solution from here). ok = a legal move on a shortest path to the
goal (= good); invalid = an illegal move (the game refuses it: an empty source, or a bigger disk
onto a smaller one).

Settings: `hanoi_disks` (TextArena's TowerOfHanoi-v0: 3) and TextArena's own turn limit set to our
`max_turns`. Solving takes 2**disks - 1 moves (7 for 3 disks), so `max_turns` must be at least
that for a pass; TextArena's v0 allows 14. The rules text says nothing of the strategy, so it is
shown (`hide_rules=false`).
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Sequence
from functools import cache
from itertools import permutations
from typing import Any

import textarena as ta

from oel.envs import EnvConfig
from oel.envs.answer_game import REASON_INVALID, TextArenaAnswerGame

TOWERS = ("A", "B", "C")
MOVES: tuple[tuple[str, str], ...] = tuple(permutations(TOWERS, 2))
ANSWERS: tuple[str, ...] = tuple(f"[{s} {t}]" for s, t in MOVES)
_MOVE = re.compile(r"\s*([ABCabc])\s*,?\s*([ABCabc])\s*")

Towers = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
"""The disks on A, B and C, bottom first (TextArena's lists), as tuples."""


def start(disks: int) -> Towers:
    return tuple(range(disks, 0, -1)), (), ()


def goal(disks: int) -> Towers:
    return (), (), tuple(range(disks, 0, -1))


def move(towers: Towers, source: str, target: str) -> Towers | None:
    """The position after moving the top disk of `source` onto `target`, or None when illegal."""
    s, t = TOWERS.index(source), TOWERS.index(target)
    if not towers[s] or (towers[t] and towers[t][-1] < towers[s][-1]):
        return None
    out = [list(x) for x in towers]
    out[t].append(out[s].pop())
    return tuple(out[0]), tuple(out[1]), tuple(out[2])


@cache
def distances(disks: int) -> dict[Towers, int]:
    """Shortest number of moves to the goal from every position (BFS backwards; moves are reversible)."""
    dist = {goal(disks): 0}
    queue = deque([goal(disks)])
    while queue:
        here = queue.popleft()
        for s, t in MOVES:
            there = move(here, s, t)
            if there is not None and there not in dist:
                dist[there] = dist[here] + 1
                queue.append(there)
    return dist


def move_values(towers: Towers, disks: int, answers: Sequence[str] = ANSWERS) -> list[float]:
    """Minus the turns to solve after each answer, best play afterwards."""
    dist = distances(disks)
    out = []
    for a in answers:
        s, t = a.strip("[]").split()
        there = move(towers, s, t)
        out.append(-float(1 + dist[towers if there is None else there]))
    return out


def random_pass_probability(disks: int, turns: int, errors_allowed: int) -> float:
    """Exact chance that answers drawn uniformly from the six moves solve the puzzle within `turns`
    answers, an illegal one being forgiven while fewer than `errors_allowed` came in a row."""

    @cache
    def win(towers: Towers, left: int, errors: int) -> float:
        if towers == goal(disks):
            return 1.0
        if left == 0:
            return 0.0
        total = 0.0
        for s, t in MOVES:
            there = move(towers, s, t)
            if there is not None:
                total += win(there, left - 1, 0)
            elif errors < errors_allowed:
                total += win(towers, left - 1, errors + 1)
        return total / len(MOVES)

    return win(start(disks), turns, 0)


class TowerOfHanoiGame(TextArenaAnswerGame):
    """TowerOfHanoi-v0 (built unwrapped, as `TowerOfHanoi-v0-raw`) with `hanoi_disks` disks."""

    env_id = "TowerOfHanoi-v0-raw"
    game_name = "hanoi"

    @property
    def hidden_description(self) -> str:  # type: ignore[override]
        return (f"You are playing a puzzle with three towers A, B and C and {self.config.hanoi_disks} disks. "
                "Each turn, answer with a move in square brackets, a source tower and a target tower, "
                "for example [A C].")

    def _make_textarena_env(self) -> Any:
        return ta.make(self.env_id, num_disks=self.config.hanoi_disks, max_turns=self.config.max_turns)

    def rules_text(self) -> str:
        return (f"You are playing Tower of Hanoi with {self.config.hanoi_disks} disks.\n"
                "You have to move the disks from tower A to tower C.\n"
                "To move a disk, type the source tower and the target tower (e.g., '[A C]').\n"
                "Note that you can only move the top disk of a tower, and that a bigger disk cannot be placed on "
                "a smaller disk.\nAt each turn, submit one move.")

    def canonical(self, content: str) -> str | None:
        """`' a, c '` -> `'[A C]'` (a move onto the same tower is passed on: the game decides)."""
        m = _MOVE.fullmatch(content)
        return f"[{m.group(1).upper()} {m.group(2).upper()}]" if m else None

    def answers(self) -> tuple[str, ...]:
        return ANSWERS

    def towers(self) -> Towers:
        """The position as the board shows it."""
        t = self.textarena_env.state.game_state["towers"]
        return tuple(t["A"]), tuple(t["B"]), tuple(t["C"])

    def answer_labels(self, answers: Sequence[str]) -> tuple[list[float], tuple[bool, ...], tuple[bool, ...]]:
        here, disks = self.towers(), self.config.hanoi_disks
        values = move_values(here, disks, answers)
        dist = distances(disks)[here]
        illegal = tuple(move(here, *a.strip("[]").split()) is None for a in answers)
        return values, tuple(not bad and v == -dist for v, bad in zip(values, illegal)), illegal

    def reference_answer(self, rng: random.Random) -> str:
        """A legal move, uniform among them (a random walk over the positions)."""
        _, _, illegal = self.answer_labels(ANSWERS)
        return rng.choice([a for a, bad in zip(ANSWERS, illegal) if not bad])

    def outcome_text(self, passed: bool, reward: float) -> str:
        turns, disks = self._turns_text(), self.config.hanoi_disks
        if passed:
            return f"Success: you moved all {disks} disks to tower C in {turns} (the fewest possible: {2**disks - 1})."
        here = self.towers()
        left = distances(disks)[here]
        where = "; ".join(f"{name}: {list(t)}" for name, t in zip(TOWERS, here))
        tail = f" The towers were {where}; solving from there needed {left} more move{'s' if left != 1 else ''}."
        if self.end_reason == REASON_INVALID:
            why = (self.textarena_env.state.game_info[0].get("reason") or "").removeprefix("Invalid Move:").strip()
            return (f"Failure: {self.config.invalid_moves_tolerated + 1} invalid moves in a row ended the game after "
                    f"{turns} (last one: {why}).{tail}")
        return (f"Failure: the turn limit ({self.config.max_turns} turns) was reached "
                f"before every disk was on tower C.{tail}")

    @classmethod
    def random_pass_rate(cls, config: EnvConfig) -> float:
        """Exact: each answer uniform over the six moves, illegal ones taking the game's invalid path."""
        return random_pass_probability(config.hanoi_disks, config.max_turns, config.invalid_moves_tolerated)


__all__ = ["TowerOfHanoiGame", "ANSWERS", "MOVES", "TOWERS", "Towers", "start", "goal", "move", "distances",
           "move_values", "random_pass_probability"]
