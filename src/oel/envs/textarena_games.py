"""FrozenLake and Sokoban from the real TextArena 0.7.4 package, set up as in the paper.

What this layer adds on top of TextArena, and why:

* Rules hidden. The game's own rules text explains every symbol; the paper replaces it with a
  generic description so the agent has to discover what H, G, X, O, # mean. We compare
  TextArena's text VERBATIM with the copy below before replacing it, and check every other
  game message for a symbol legend (`oel.envs.rules_guard`): if a new TextArena words it
  differently we raise `EnvironmentTextError` rather than leak (or half-replace) the rules.
* One action. TextArena acts on the FIRST bracketed move in a string; models state their
  final answer last. `parse_action` picks the answer and the game receives exactly one
  canonical move, or `NO_ACTION_TEXT` (which TextArena counts as an invalid move).
* Turn cap. At most `max_turns` model turns, invalid ones included (TextArena's own counter
  skips invalid moves). TextArena's rule stays: one invalid move is forgiven with a warning,
  the next consecutive one ends the game.
* Randomness. `reset(seed)` in TextArena calls the GLOBAL `random.seed` and then draws the map
  from the global RNG; we save and restore the global random (and numpy) state around every
  call into TextArena, under a process-wide lock so that episodes run in threads (e.g. one per
  concurrent endpoint request) cannot draw from each other's seeded RNG.
* Text. The observation is the whole game so far as one text: our description, then every
  game message and move as `[GAME] ...` / `[Player] ...` lines (TextArena's own rendering).
  Sokoban writes "You  moved [up]." with a double space when no box moves; we close that gap.
* Outcome. When the episode ends, `StepResult.outcome` says success or failure and why.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import textarena as ta

from oel.envs import EnvConfig
from oel.envs.actions import NO_ACTION_TEXT, parse_action
from oel.envs.base import StepResult
from oel.envs.solver import BoxState, GridState, LakeState, distance_to_success
from oel.envs.rules_guard import check_messages, rules_error
from oel.errors import EnvironmentTextError

log = logging.getLogger(__name__)

GAME_DESCRIPTION = (
    "You are playing a game on a grid board. Your piece is the one marked 'P'.\n"
    "Your aim is to reach the goal of this game using as few steps as you can.\n"
    "Nobody will tell you what the other symbols on the board stand for: work it out from\n"
    "what happens after each of your moves.\n"
    "Each turn, answer with one move in square brackets: [up], [down], [left] or [right]\n"
    "(the keys [w], [a], [s], [d] mean the same)."
)
"""Our generic description, shown instead of the game's rules (identical for every game)."""

GAME_SENDER = "GAME"
PLAYER_SENDER = "Player"

# End-of-episode reason codes (`TextArenaGridGame.end_reason`).
REASON_GOAL = "goal"
REASON_HOLE = "hole"
REASON_INVALID = "invalid_moves"
REASON_TURN_LIMIT = "turn_limit"
REASON_OTHER = "other"

SUCCESS_REWARD = 1.0
"""Pass means a final reward of exactly this; TextArena's partial credit is a failure."""

TEXTARENA_PROMPT = ta.ObservationType.PROMPT
TEXTARENA_PLAYER_ACTION = ta.ObservationType.PLAYER_ACTION

Observation = tuple[int, str, Any]


_GLOBAL_RANDOM_LOCK = threading.RLock()


@contextlib.contextmanager
def isolated_global_random() -> Iterator[None]:
    """Run a block alone (process-wide lock) and leave no trace on the global `random` and numpy RNGs."""
    with _GLOBAL_RANDOM_LOCK:
        py_state = random.getstate()
        np_state = np.random.get_state()
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class TextArenaGridGame:
    """A `TextEnv` over one TextArena single-player grid game; subclasses give game details."""

    env_id: ClassVar[str]
    rules_text: ClassVar[str]
    """TextArena's rules text, verbatim, as TextArena 0.7.4 writes it."""
    end_reasons: ClassVar[dict[str, str]]
    """Prefix of TextArena's end-of-game reason -> our reason code."""
    success_text: ClassVar[str]

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        self.textarena_env = self._make_textarena_env()
        self.end_reason: str | None = None
        """After the episode: one of the REASON_* codes."""
        self.turns = 0
        self._history: list[str] = []
        self._done = True

    def _make_textarena_env(self) -> Any:
        raise NotImplementedError

    def clean_message(self, message: str) -> str:
        """Hook for fixing a game's textual quirks; the default keeps the text as it is."""
        return message

    def solver_state(self) -> GridState:
        """The current position for `oel.envs.solver`, read from the game's internal board."""
        raise NotImplementedError

    # ---- the TextEnv protocol -------------------------------------------------------------

    def reset(self, seed: int) -> str:
        """Start the map for `seed` and return the first observation (description + board)."""
        with isolated_global_random():
            self.textarena_env.reset(num_players=1, seed=seed)
        self.textarena_env.state.error_allowance = self.config.invalid_moves_tolerated
        at = f"reset(seed={seed})"
        messages = self._drain(at)
        if not messages:
            raise EnvironmentTextError(f"{self.env_id}: TextArena produced no observation on {at}")
        if messages[0][2] != TEXTARENA_PROMPT:
            raise rules_error(self.env_id, type(self).__name__, at, "its first message is not the rules prompt")
        self._history = [GAME_DESCRIPTION] + [self._render(m) for m in messages[1:]]
        self.turns, self.end_reason, self._done = 0, None, False
        return self.observation()

    def step(self, response: str) -> StepResult:
        """Play the move in the raw `response`; return the game's reply and, at the end, the outcome."""
        if self._done:
            raise RuntimeError(f"{self.env_id}: step() without an episode in progress; call reset(seed) first")
        action = parse_action(response, strict=self.config.strict_actions)
        with isolated_global_random():
            done, _info = self.textarena_env.step(action if action is not None else NO_ACTION_TEXT)
        self.turns += 1
        messages = self._drain(f"turn {self.turns}")
        self._history.extend(self._render(m) for m in messages)
        feedback = "\n".join(self._render(m) for m in messages if m[2] != TEXTARENA_PLAYER_ACTION)
        if done:
            reward = float(self.textarena_env.state.rewards[0])
            self.end_reason = self._classify(self.textarena_env.state.game_info[0].get("reason") or "")
        elif self.turns >= self.config.max_turns:
            # TextArena's own partial-credit measure, so capped episodes score like the game's own ends.
            reward = float(self.textarena_env._get_percentage_completion())
            self.end_reason = REASON_TURN_LIMIT
        else:
            return StepResult(feedback=feedback, done=False, observation=self.observation(), action=action)
        self._done = True
        passed = reward == SUCCESS_REWARD
        return StepResult(feedback=feedback, done=True, action=action, outcome=self._outcome_text(passed),
                          passed=passed, reward=reward)

    # ---- text --------------------------------------------------------------------------------

    def observation(self) -> str:
        """The whole game so far as one text."""
        return "\n".join(self._history)

    def _drain(self, at: str) -> list[Observation]:
        """The game's new messages, each checked by the rules guard before anything sees it."""
        _player, messages = self.textarena_env.get_observation()
        check_messages(self.env_id, type(self).__name__, self.rules_text, messages, TEXTARENA_PROMPT, at=at)
        return list(messages)

    def _render(self, observation: Observation) -> str:
        sender, message, kind = observation
        if kind == TEXTARENA_PROMPT:  # only the verified rules text reaches here; never show it
            return GAME_DESCRIPTION
        name = GAME_SENDER if sender == ta.GAME_ID else PLAYER_SENDER
        return f"[{name}] {self.clean_message(message)}"

    def _classify(self, reason: str) -> str:
        for prefix, code in self.end_reasons.items():
            if reason.startswith(prefix):
                return code
        log.warning("%s: unrecognised end-of-game reason from TextArena: %r", self.env_id, reason)
        return REASON_OTHER

    def _outcome_text(self, passed: bool) -> str:
        turns = f"{self.turns} turn{'s' if self.turns != 1 else ''}"
        if passed:
            return f"Success: {self.success_text} in {turns}."
        reason = self.textarena_env.state.game_info[0].get("reason") or ""
        if self.end_reason == REASON_HOLE:
            return f"Failure: you fell into a hole after {turns}."
        if self.end_reason == REASON_INVALID:
            streak = self.config.invalid_moves_tolerated + 1
            detail = reason.removeprefix("Invalid Move:").strip().rstrip(".")
            return f"Failure: {streak} invalid moves in a row ended the game after {turns} (last one: {detail})."
        if self.end_reason == REASON_TURN_LIMIT:
            return (f"Failure: the turn limit ({self.config.max_turns} turns) was reached before the goal."
                    f"{self._stuck_note()}")
        return f"Failure: the game ended after {turns} ({reason})."

    def _stuck_note(self) -> str:
        """Extra failure detail for games where the position can become unwinnable."""
        return ""


class FrozenLakeGame(TextArenaGridGame):
    """FrozenLake-v0-raw: walk from the top-left corner to the goal at bottom-right, avoiding holes."""

    env_id = "FrozenLake-v0-raw"
    rules_text = (
        "Welcome to Frozen Lake!\n\n"
        "You are represented by 'P' on the grid.\n"
        "Grid symbols:\n"
        "  ' ' = Frozen surface (safe to walk on)\n"
        "  'H' = Hole (fall in and lose!)\n"
        "  'G' = Goal (reach this to win!)\n"
        "  'P' = Your current position\n\n"
        "Available actions: up, down, left, right (or w, a, s, d)\n"
        "Type your action as: [up], [down], [left], [right] or [w], [a], [s], [d]\n\n"
        "Objective: Navigate from the start (top-left) to the goal (bottom-right) "
        "without falling into any holes!\n"
    )
    end_reasons = {
        "Congratulations! You reached the goal": REASON_GOAL,
        "You fell into a hole": REASON_HOLE,
        "Invalid Move:": REASON_INVALID,
        "You reached the turn limit": REASON_TURN_LIMIT,
    }
    success_text = "you reached the goal"

    def _make_textarena_env(self) -> Any:
        return ta.make(self.env_id, size=self.config.frozenlake_size, num_holes=self.config.frozenlake_holes)

    def solver_state(self) -> LakeState:
        game_state = self.textarena_env.state.game_state
        grid = game_state["grid"]
        holes = frozenset((r, c) for r, row in enumerate(grid) for c, cell in enumerate(row) if cell == "H")
        return LakeState(size=self.textarena_env.size, holes=holes, goal=tuple(game_state["goal_pos"]),
                         player=tuple(game_state["player_pos"]))


class SokobanGame(TextArenaGridGame):
    """Sokoban-v0 (built unwrapped, as `Sokoban-v0-raw`, since we render the history ourselves)."""

    env_id = "Sokoban-v0-raw"
    rules_text = (
        "You are solving the Sokoban puzzle. You are the player and you need to push all boxes to targets.\n"
        "        When you are right next to a box, you can push it by moving in the same direction.\n"
        "        You cannot push a box through a wall, and you cannot pull a box.\n"
        "        On the board, objects are represented as: \n"
        "        - The player (you) appears as 'P' \n"
        "        - Walls are represented with '#' \n"
        "        - Boxes are marked as 'X' \n"
        "        - Empty goals are shown with a 'O'\n"
        "        - Boxes on goals are visualized with '√'\n"
        "        You can also use [w] for up, [a] for left, [s] for down, and [d] for right.\n"
        "        "
    )
    end_reasons = {
        "Congratulations! You have solved the Sokoban puzzle": REASON_GOAL,
        "Invalid Move:": REASON_INVALID,
        "The turn limit has been reached": REASON_TURN_LIMIT,
    }
    success_text = "you solved the puzzle (every box is on a target)"
    _DOUBLE_SPACE = "You  moved"
    """TextArena's "You {'pushed a box while' or ''} moved" leaves two spaces when no box moved."""

    def _make_textarena_env(self) -> Any:
        size = self.config.sokoban_size
        return ta.make(self.env_id, dim_room=(size, size), num_boxes=self.config.sokoban_boxes,
                       max_turns=self.config.max_turns)

    def clean_message(self, message: str) -> str:
        return message.replace(self._DOUBLE_SPACE, "You moved")

    def solver_state(self) -> BoxState:
        env = self.textarena_env
        fixed, room = env.room_fixed, env.room_state
        walls = frozenset((int(r), int(c)) for r, c in np.argwhere(fixed == 0))
        targets = frozenset((int(r), int(c)) for r, c in np.argwhere(fixed == 2))
        boxes = frozenset((int(r), int(c)) for r, c in np.argwhere((room == 3) | (room == 4)))
        player = (int(env.player_position[0]), int(env.player_position[1]))
        return BoxState(walls=walls, targets=targets, boxes=boxes, player=player)

    def _stuck_note(self) -> str:
        if distance_to_success(self.solver_state()) is None:
            return " The box is stuck: the puzzle could no longer be solved from the final position."
        return ""
