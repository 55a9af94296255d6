"""The TextArena games as oel plays them: hidden rules, one action, turn cap, invalid moves, outcomes."""

from __future__ import annotations

import random
from collections import deque
from functools import partial

import numpy as np
import pytest
from textarena.envs.FrozenLake.env import FrozenLakeEnv
from textarena.envs.Sokoban.env import SokobanEnv

from oel.envs import EnvConfig, TextEnv
from oel.envs.solver import MOVES, GridState, Status, optimal_actions, transition
from oel.envs.textarena_games import (GAME_DESCRIPTION, REASON_GOAL, REASON_HOLE, REASON_INVALID, REASON_TURN_LIMIT,
                                      FrozenLakeGame, SokobanGame, TextArenaGridGame)
from oel.errors import ConfigError, EnvironmentTextError
from game_helpers import make_game

GAMES = ["frozenlake", "sokoban"]
SEED = 3
# Phrases only TextArena's rules text contains: none may ever reach the model.
RULES_PHRASES = ["Hole (fall in", "Goal (reach", "Frozen surface", "Boxes are marked", "Walls are represented",
                 "Empty goals", "push all boxes"]


game = partial(make_game, cls=TextArenaGridGame)


def first_wall_move(state: GridState) -> str:
    return next(a for a in MOVES if transition(state, a)[1] is Status.INVALID)


def path_to_hole(state: GridState) -> list[str]:
    """Shortest action list that ends in a hole (FrozenLake), found by BFS over the solver's model."""
    queue: deque[tuple[GridState, list[str]]] = deque([(state, [])])
    seen = {state}
    while queue:
        current, path = queue.popleft()
        for action in MOVES:
            nxt, status = transition(current, action)
            if status is Status.LOST:
                return path + [action]
            if status is Status.MOVED and nxt not in seen:
                seen.add(nxt)
                queue.append((nxt, path + [action]))
    raise AssertionError("no hole reachable")


@pytest.mark.parametrize("name", GAMES)
def test_protocol_and_rules_replaced(name: str) -> None:
    env = game(name)
    assert isinstance(env, TextEnv)
    obs = env.reset(SEED)
    assert obs.startswith(GAME_DESCRIPTION)
    assert "P" in obs and "[GAME] Current Board:" in obs
    result = env.step("[down]")
    for text in (obs, result.feedback, result.observation):
        for phrase in RULES_PHRASES:
            assert phrase not in text


@pytest.mark.parametrize("name,cls,attr", [("frozenlake", FrozenLakeEnv, "_prompt"),
                                           ("sokoban", SokobanEnv, "_generate_player_prompt")])
def test_changed_rules_text_fails_loudly(monkeypatch: pytest.MonkeyPatch, name: str, cls: type, attr: str) -> None:
    original = getattr(cls, attr)
    monkeypatch.setattr(cls, attr, lambda self, player_id, game_state: original(self, player_id, game_state) + " ")
    with pytest.raises(EnvironmentTextError, match="rules text"):
        game(name).reset(SEED)


LEGEND = "\nLegend: H = hole, G = goal"


@pytest.mark.parametrize("from_call", [0, 1], ids=["at-reset", "mid-game"])
def test_symbol_legend_in_a_game_message_fails_loudly(monkeypatch: pytest.MonkeyPatch, from_call: int) -> None:
    """A legend added to the board text (not the rules prompt) must never reach the agent."""
    original, calls = FrozenLakeEnv._render_board, []

    def board_with_legend(self):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(self) + (LEGEND if len(calls) > from_call else "")

    monkeypatch.setattr(FrozenLakeEnv, "_render_board", board_with_legend)
    env = game("frozenlake")
    with pytest.raises(EnvironmentTextError) as err:
        env.reset(SEED)
        env.step("[right]")
    msg = str(err.value)
    assert ("reset(seed=" if from_call == 0 else "turn 1") in msg
    assert "textarena 0.7.4" in msg and "update" in msg and "LEGEND_PATTERNS" in msg


def test_legend_patterns_catch_legends_and_pass_real_game_text() -> None:
    from oel.envs.rules_guard import legend_in

    for text in ("Legend: H hole", "H = hole", "'X' is a box", "goal: G", "# represents a wall", "X marks boxes",
                 "Boxes are marked X", "O is the target"):
        assert legend_in(text) is not None, text
    for text in ("You moved right to position (0, 1).", "You're on safe ice. Keep going!", "Current Board:",
                 "You attempted an invalid move. Reason: You cannot move into a wall! Please resubmit a valid move",
                 "|  P  |     |  H  |", "# _ _ O _ #", "Available Moves: up, down, left, right"):
        assert legend_in(text) is None, text


def test_rules_text_check_is_verbatim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FrozenLakeGame, "rules_text", FrozenLakeGame.rules_text.replace("Hole", "Pit"))
    with pytest.raises(EnvironmentTextError):
        game("frozenlake").reset(SEED)


@pytest.mark.parametrize("name", GAMES)
def test_global_random_state_is_restored(name: str) -> None:
    random.seed(1234)
    np.random.seed(99)
    expected_py, expected_np = random.random(), np.random.random()
    random.seed(1234)
    np.random.seed(99)
    env = game(name)
    env.reset(SEED)
    env.step("[left]")
    env.reset(SEED + 1)
    assert random.random() == expected_py
    assert np.random.random() == expected_np


@pytest.mark.parametrize("name", GAMES)
def test_same_seed_same_map(name: str) -> None:
    a, b = game(name), game(name)
    assert a.reset(11) == b.reset(11)
    assert a.solver_state() == b.solver_state()
    assert any(a.reset(s) != b.reset(11) for s in range(12, 20))


@pytest.mark.parametrize("name", GAMES)
def test_one_invalid_move_is_tolerated_two_end_the_game(name: str) -> None:
    env = game(name)
    env.reset(SEED)
    first = env.step("I have no idea")
    assert not first.done and first.action is None
    assert "invalid move" in first.feedback
    second = env.step("still no idea")
    assert second.done and not second.passed
    assert env.end_reason == REASON_INVALID
    assert second.outcome.startswith("Failure: 2 invalid moves in a row")


@pytest.mark.parametrize("name", GAMES)
def test_valid_move_resets_the_invalid_streak(name: str) -> None:
    env = game(name)
    env.reset(SEED)
    wall = first_wall_move(env.solver_state())
    assert not env.step(wall).done                   # hitting a wall is an invalid move
    legal = next(a for a in MOVES if transition(env.solver_state(), a)[1] is Status.MOVED)
    assert not env.step(legal).done
    assert not env.step("nothing").done              # a new streak: tolerated again


@pytest.mark.parametrize("name", GAMES)
def test_turn_cap_counts_invalid_turns(name: str) -> None:
    env = game(name, max_turns=3)
    env.reset(SEED)
    state = env.solver_state()
    wall = first_wall_move(state)
    legal = next(a for a in MOVES if transition(state, a)[1] is Status.MOVED)
    back = {"[up]": "[down]", "[down]": "[up]", "[left]": "[right]", "[right]": "[left]"}[legal]
    results = [env.step(r) for r in (wall, legal, back)]  # invalid, move, move back: no win possible
    assert [r.done for r in results] == [False, False, True]
    assert env.end_reason == REASON_TURN_LIMIT
    assert results[-1].outcome.startswith("Failure: the turn limit (3 turns)")
    assert results[-1].observation == ""
    with pytest.raises(RuntimeError):
        env.step("[up]")


def test_frozenlake_outcomes_goal_and_hole() -> None:
    env = game("frozenlake")
    env.reset(SEED)
    results = [env.step(f"<think>go</think>{a}") for a in optimal_actions(env.solver_state())]
    assert results[-1].done and results[-1].passed and results[-1].reward == 1.0
    assert env.end_reason == REASON_GOAL
    assert results[-1].outcome == "Success: you reached the goal in 4 turns."
    env.reset(SEED)
    for action in path_to_hole(env.solver_state()):
        result = env.step(action)
    assert result.done and not result.passed and result.reward < 1.0
    assert env.end_reason == REASON_HOLE
    assert result.outcome.startswith("Failure: you fell into a hole")


def test_sokoban_success_feedback_and_double_space_fix() -> None:
    env = game("sokoban")
    env.reset(0)
    plan = optimal_actions(env.solver_state())
    assert plan is not None and len(plan) <= 5
    results = [env.step(a) for a in plan]
    assert results[-1].passed and env.end_reason == REASON_GOAL
    assert "Success" in results[-1].outcome
    env.reset(SEED)
    plain = next(a for a in MOVES if transition(env.solver_state(), a)[1] is Status.MOVED
                 and transition(env.solver_state(), a)[0].boxes == env.solver_state().boxes)
    feedback = env.step(plain).feedback
    assert f"You moved {plain}." in feedback and "  moved" not in feedback


def test_env_receives_only_the_last_action() -> None:
    """TextArena would act on the FIRST bracket; we hand it the answer's last one."""
    env = game("frozenlake")
    env.reset(SEED)
    result = env.step("[up] is a wall, so I choose [down]")
    assert result.action == "[down]" and "[Player] [down]" in result.observation
    assert env.solver_state().player == (1, 0)


def test_lenient_mode_accepts_a_bare_word() -> None:
    strict, lenient = game("frozenlake"), game("frozenlake", strict_actions=False)
    strict.reset(SEED)
    lenient.reset(SEED)
    assert strict.step("down").action is None
    assert lenient.step("down").action == "[down]"


@pytest.mark.parametrize("overrides", [dict(game="chess"), dict(max_turns=0), dict(frozenlake_holes=7),
                                       dict(sokoban_size=3), dict(invalid_moves_tolerated=-1)])
def test_config_validation_names_the_field(overrides: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(overrides))):
        EnvConfig(**overrides)


def test_config_sizes_reach_textarena() -> None:
    lake = game("frozenlake", frozenlake_size=4, frozenlake_holes=3)
    lake.reset(SEED)
    assert lake.solver_state().size == 4 and len(lake.solver_state().holes) == 3
    box = game("sokoban", sokoban_size=7, sokoban_boxes=2)
    box.reset(SEED)
    assert len(box.solver_state().boxes) == 2 and box.textarena_env.room_state.shape == (7, 7)
    assert isinstance(box, SokobanGame)


THREADS = 4
RESETS_PER_THREAD = 100


def test_maps_stay_deterministic_across_threads() -> None:
    """Concurrent resets in threads must give each seed its own map (the global RNG is shared)."""
    from concurrent.futures import ThreadPoolExecutor

    seeds = list(range(RESETS_PER_THREAD))
    reference = game("frozenlake")
    expected = {s: (reference.reset(s), reference.solver_state()) for s in seeds}

    def worker(offset: int) -> bool:
        env = game("frozenlake")
        order = seeds[offset:] + seeds[:offset]
        return all((env.reset(s), env.solver_state()) == expected[s] for s in order)

    with ThreadPoolExecutor(THREADS) as pool:
        assert all(pool.map(worker, range(0, RESETS_PER_THREAD, RESETS_PER_THREAD // THREADS)))
