"""Exact search over the known map: shortest plans, move quality and the pass-rate ceiling.

The states here are read from the game's internal board (see `TextArenaGridGame.solver_state`),
never parsed from text, and `transition` reproduces TextArena 0.7.4's move rules exactly
(tests replay random moves through the real game and compare). With that model we can ask:

* `distance_to_success(state)`: fewest moves that win (None: impossible) -- breadth-first search.
* `optimal_actions(state)`: one shortest winning plan.
* `is_optimal_move(state, action)`: does this move lie on a shortest path to success? The
  "move quality" diagnostic (docs/method.md#evaluation) is the share of a policy's moves for which this holds.
* `move_quality(state, actions)`: replay an episode's actions and mark each move.
* `random_pass_probability(state, max_turns)`: the EXACT chance that uniformly random moves win
  within the turn cap, honouring the invalid-move rule (a dynamic programme, no sampling);
  `blind_pass_probability` the same for any fixed move distribution (a policy with only a prior).

Positions are (row, col); actions are the canonical strings of `oel.envs.actions` ('[up]', ...).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from enum import Enum
from functools import lru_cache
from typing import Mapping, Union

Pos = tuple[int, int]

MOVES: dict[str, Pos] = {"[up]": (-1, 0), "[down]": (1, 0), "[left]": (0, -1), "[right]": (0, 1)}
"""Canonical actions and their (row, col) displacement, in a fixed order (ties break in this order)."""


@dataclass(frozen=True)
class LakeState:
    """FrozenLake: where the holes, the goal and the player are on a square board."""

    size: int
    holes: frozenset[Pos]
    goal: Pos
    player: Pos


@dataclass(frozen=True)
class BoxState:
    """Sokoban: fixed walls and targets, movable boxes and the player."""

    walls: frozenset[Pos]
    targets: frozenset[Pos]
    boxes: frozenset[Pos]
    player: Pos


GridState = Union[LakeState, BoxState]


class Status(Enum):
    """What one move does."""

    MOVED = "moved"
    INVALID = "invalid"
    """Into the border / a wall, or a box pushed into a wall or another box: the game refuses it."""
    LOST = "lost"
    """Fell into a hole (FrozenLake)."""
    WON = "won"


def _step(pos: Pos, action: str) -> Pos:
    dr, dc = MOVES[action]
    return pos[0] + dr, pos[1] + dc


def _lake_transition(state: LakeState, action: str) -> tuple[LakeState, Status]:
    r, c = _step(state.player, action)
    if not (0 <= r < state.size and 0 <= c < state.size):
        return state, Status.INVALID
    moved = replace(state, player=(r, c))
    if (r, c) in state.holes:
        return moved, Status.LOST
    return moved, Status.WON if (r, c) == state.goal else Status.MOVED


def _box_transition(state: BoxState, action: str) -> tuple[BoxState, Status]:
    target = _step(state.player, action)
    if target in state.walls:
        return state, Status.INVALID
    boxes = state.boxes
    if target in boxes:
        pushed_to = _step(target, action)
        if pushed_to in state.walls or pushed_to in boxes:
            return state, Status.INVALID
        boxes = (boxes - {target}) | {pushed_to}
    moved = BoxState(state.walls, state.targets, boxes, target)
    return moved, Status.WON if boxes <= state.targets else Status.MOVED


def transition(state: GridState, action: str) -> tuple[GridState, Status]:
    """The state after `action` and what happened; an invalid move leaves the state unchanged."""
    if action not in MOVES:
        raise ValueError(f"transition: unknown action {action!r}; expected one of {list(MOVES)}")
    if isinstance(state, LakeState):
        return _lake_transition(state, action)
    return _box_transition(state, action)


def is_won(state: GridState) -> bool:
    if isinstance(state, LakeState):
        return state.player == state.goal
    return state.boxes <= state.targets


@lru_cache(maxsize=100_000)
def _plan(state: GridState) -> tuple[str, ...] | None:
    """A shortest winning action sequence from `state` (BFS over all reachable states), or None."""
    if is_won(state):
        return ()
    parents: dict[GridState, tuple[GridState, str] | None] = {state: None}
    queue: deque[GridState] = deque([state])
    while queue:
        current = queue.popleft()
        for action in MOVES:
            nxt, status = transition(current, action)
            if status in (Status.INVALID, Status.LOST) or nxt in parents:
                continue
            parents[nxt] = (current, action)
            if status is Status.WON:
                return _unwind(parents, nxt)
            queue.append(nxt)
    return None


def _unwind(parents: dict[GridState, tuple[GridState, str] | None], end: GridState) -> tuple[str, ...]:
    actions: list[str] = []
    link = parents[end]
    while link is not None:
        prev, action = link
        actions.append(action)
        link = parents[prev]
    return tuple(reversed(actions))


def optimal_actions(state: GridState) -> list[str] | None:
    """One shortest winning plan from `state`; None when the game can no longer be won."""
    plan = _plan(state)
    return None if plan is None else list(plan)


def distance_to_success(state: GridState) -> int | None:
    """Fewest moves that win from `state` (0 if already won); None when winning is impossible."""
    plan = _plan(state)
    return None if plan is None else len(plan)


def solvable_within(state: GridState, max_moves: int) -> bool:
    """Whether some sequence of at most `max_moves` valid moves wins from `state`."""
    distance = distance_to_success(state)
    return distance is not None and distance <= max_moves


def is_optimal_move(state: GridState, action: str | None) -> bool:
    """True when `action` is the first move of SOME shortest winning plan from `state`.

    No action, an invalid move, a losing move, or any move in an unwinnable state is not optimal.
    """
    distance = distance_to_success(state)
    if action is None or action not in MOVES or not distance:
        return False
    nxt, status = transition(state, action)
    if status is Status.WON:
        return True
    return status is Status.MOVED and distance_to_success(nxt) == distance - 1


def replay(state: GridState, actions: list[str | None]) -> list[GridState]:
    """The state before each of an episode's moves, replayed from its start `state`.

    Invalid moves (and None) leave the state unchanged, as in the game; replay stops at a win
    or loss, so later moves (there should be none) get no state.
    """
    states: list[GridState] = []
    for action in actions:
        states.append(state)
        if action not in MOVES:
            continue
        state, status = transition(state, action)
        if status in (Status.WON, Status.LOST):
            break
    return states


def move_quality(state: GridState, actions: list[str | None]) -> list[bool]:
    """Replay an episode's actions from its start `state`; for each move, was it optimal?"""
    return [is_optimal_move(s, a) for s, a in zip(replay(state, actions), actions)]


def optimal_share(state: GridState) -> float:
    """The chance that a uniformly random move is optimal here: random play's move quality at this state."""
    return sum(is_optimal_move(state, m) for m in MOVES) / len(MOVES)


def blind_pass_probability(state: GridState, move_probs: Mapping[str, float], max_turns: int,
                           invalid_moves_tolerated: int = 1) -> float:
    """Exact probability that a STATE-BLIND policy wins within `max_turns` model turns.

    The policy answers each move with the same probabilities `move_probs` (canonical moves; missing
    ones get 0) whatever the board shows: a pure move prior. It bounds what a teacher that has only a
    direction habit can win, and shows that a prior's pass rate and its expected move quality can
    disagree (always [down] scores 50% move quality on a 3x3 lake and never wins). Mirrors the
    episode rules: every turn counts; an invalid move is forgiven unless it is the
    (`invalid_moves_tolerated` + 1)-th in a row, which ends the game as a loss.
    """
    unknown = set(move_probs) - set(MOVES)
    if unknown:
        raise ValueError(f"move_probs: unknown moves {sorted(unknown)}; expected some of {list(MOVES)}")
    if any(p < 0 for p in move_probs.values()) or abs(sum(move_probs.values()) - 1.0) > 1e-6:
        raise ValueError(f"move_probs: expected non-negative probabilities summing to 1, got {dict(move_probs)}")
    probs = [(action, move_probs.get(action, 0.0)) for action in MOVES]

    @lru_cache(maxsize=None)
    def win_chance(current: GridState, turns_left: int, invalid_streak: int) -> float:
        if turns_left == 0:
            return 0.0
        total = 0.0
        for action, p in probs:
            if p == 0.0:
                continue
            nxt, status = transition(current, action)
            if status is Status.WON:
                total += p
            elif status is Status.MOVED:
                total += p * win_chance(nxt, turns_left - 1, 0)
            elif status is Status.INVALID and invalid_streak < invalid_moves_tolerated:
                total += p * win_chance(current, turns_left - 1, invalid_streak + 1)
        return total

    return win_chance(state, max_turns, 0)


UNIFORM: dict[str, float] = {action: 1.0 / len(MOVES) for action in MOVES}
"""Uniformly random moves: the reference policy of every pass-rate table."""


def random_pass_probability(state: GridState, max_turns: int, invalid_moves_tolerated: int = 1) -> float:
    """Exact probability that uniformly random moves win within `max_turns` model turns."""
    return blind_pass_probability(state, UNIFORM, max_turns, invalid_moves_tolerated)
