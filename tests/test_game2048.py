"""2048 (3x3) as oel plays it: the simulator pinned against TextArena's own move, spawn, status and
score code, the expectimax against a plain tree search over TextArena's code, the real game's paths."""

from __future__ import annotations

import math
import random
from collections import Counter
from functools import cache

import pytest

from oel.envs import EnvConfig
from oel.envs.game2048 import (ANSWERS, DIRECTIONS, Game2048Game, completion, move_values, slide, spawn_outcomes,
                               stuck)
from oel.envs.seeds import heldout_seeds
from oel.envs.textarena_games import isolated_global_random
from oel.errors import ConfigError, EnvironmentTextError
from oel.evaluate.answer_probes import label
from game_helpers import game_factory

SEED = 1_000_000
TILES = (0, 0, 0, 2, 2, 4, 4, 8, 16)


game = game_factory("g2048", Game2048Game)


def random_board(rng: random.Random):
    return tuple(tuple(rng.choice(TILES) for _ in range(3)) for _ in range(3))


def set_board(env: Game2048Game, board, score: int = 0) -> None:
    env.textarena_env.state.game_state["board"] = [list(r) for r in board]
    env.textarena_env.state.game_state["score"] = score


def test_simulator_matches_textarenas_code_on_random_boards():
    env, rng = game(g2048_target=64), random.Random(0)
    env.reset(SEED)
    ta_env = env.textarena_env
    for _ in range(400):
        board, score = random_board(rng), rng.randrange(0, 200, 4)
        for index, direction in enumerate(DIRECTIONS):
            set_board(env, board)
            moved, gained = ta_env._apply_move(index)
            slid, ours = slide(board, direction)
            assert (slid, ours, moved) == (env.board(), gained, slid != board)
        set_board(env, board, score)
        assert completion(board, score, 64) == pytest.approx(ta_env._get_percentage_completion())
        assert stuck(board) == (ta_env._check_status() == "lose")


def test_spawn_distribution_matches_textarenas_spawn():
    env = game()
    env.reset(SEED)
    board = ((2, 0, 4), (0, 8, 0), (2, 2, 0))
    counts: Counter = Counter()
    n = 20_000
    with isolated_global_random():
        random.seed(11)
        for _ in range(n):
            grid = [list(r) for r in board]
            env.textarena_env._spawn_tile(grid)
            counts[tuple(tuple(r) for r in grid)] += 1
    expected = dict(spawn_outcomes(board))
    assert set(counts) == set(expected) and sum(expected.values()) == pytest.approx(1.0)
    for b, p in expected.items():
        assert counts[b] / n == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))


def test_parse_paths_and_outcomes():
    env = game(max_turns=3)
    first = env.reset(SEED)
    assert first.startswith("You are playing 2048 on a 3x3 board.") and "Score: 0" in first
    assert env.parse("[w]") == "[Up]" and env.parse("<think>[left]</think>[ RIGHT ]") == "[Right]"
    assert env.parse("[north]") is None
    board = env.board()
    still = next(a for a in ANSWERS if slide(board, a.strip("[]"))[0] == board)
    assert label(env, "k", SEED).invalid[ANSWERS.index(still)]
    assert "Board did not change" in env.step(still).feedback  # forgiven once
    result = env.step("stay")
    assert result.done and not result.passed and result.outcome.startswith("Failure: 2 moves in a row")

    env.reset(SEED)
    result = None
    for _ in range(3):
        result = env.step(env.reference_answer(random.Random(1)))
    assert result is not None and result.done and "turn limit (3 turns)" in result.outcome
    assert result.reward == pytest.approx(completion(env.board(), env.score(), 2048))


def test_a_small_target_can_be_won():
    env = game(g2048_target=8, max_turns=30)
    env.reset(SEED)
    result = None
    while not env.done:
        values, _, _ = env.answer_labels(ANSWERS)
        result = env.step(ANSWERS[values.index(max(values))])
    assert result is not None and result.passed and result.reward == 1.0 and result.outcome.startswith("Success")


def test_hidden_rules_changed_text_and_bad_settings():
    assert "You are playing 2048" not in game(hide_rules=True).reset(SEED)
    env = game()
    env.textarena_env._prompt = lambda player_id, game_state: "Keep your biggest tile in a corner."
    with pytest.raises(EnvironmentTextError, match="rules prompt is not the verified text"):
        env.reset(SEED)
    with pytest.raises(ConfigError, match="g2048_target"):
        EnvConfig(game="g2048", g2048_target=100)
    with pytest.raises(ConfigError, match="game: expected one of"):
        EnvConfig(game="2048")  # type: ignore[arg-type]


# ---- the expectimax against a plain tree search over TextArena's own code ---------------------


def tree_value(env: Game2048Game, board, score: int, left: int, errs: int, target: int) -> float:
    """Best expected final score, by exhaustive search (no memo), every step through TextArena's
    `_apply_move`, `_check_status` and `_get_percentage_completion` on a scratch board."""
    set_board(env, board, score)
    here = env.textarena_env._get_percentage_completion()
    if left == 0:
        return here
    best = -1.0
    for index in range(4):
        set_board(env, board, score)
        moved, gained = env.textarena_env._apply_move(index)
        if not moved:
            q = tree_value(env, board, score, left - 1, errs + 1, target) if errs < 1 else here
        else:
            slid, q = env.board(), 0.0
            empties = [(r, c) for r in range(3) for c in range(3) if slid[r][c] == 0]
            for r, c in empties:
                for tile, p in ((2, 0.9), (4, 0.1)):
                    nxt = tuple(tuple(tile if (i, j) == (r, c) else slid[i][j] for j in range(3)) for i in range(3))
                    set_board(env, nxt, score + gained)
                    status = env.textarena_env._check_status()
                    if status == "win":
                        v = 1.0
                    elif status == "lose":
                        v = env.textarena_env._get_percentage_completion()
                    else:
                        v = tree_value(env, nxt, score + gained, left - 1, 0, target)
                    q += p / len(empties) * v
        best = max(best, q)
    return best


@pytest.mark.parametrize("board,left,target", [
    (((2, 2, 0), (0, 0, 0), (0, 0, 4)), 2, 8),
    (((4, 2, 4), (2, 4, 2), (4, 2, 0)), 2, 2048),
    (((2, 4, 8), (4, 8, 2), (8, 2, 2)), 3, 16),
    (((0, 0, 0), (2, 0, 0), (0, 0, 2)), 2, 2048),
])
def test_expectimax_matches_exhaustive_search(board, left, target):
    env = game(g2048_target=target)
    env.reset(SEED)
    values = move_values(board, 12, target, left, 0, 1, depth=left)
    for index, v in enumerate(values):
        set_board(env, board, 12)
        moved, gained = env.textarena_env._apply_move(index)
        if not moved:
            expected = tree_value(env, board, 12, left - 1, 1, target)
        else:
            slid = env.board()
            expected = 0.0
            for nxt, p in spawn_outcomes(slid):
                set_board(env, nxt, 12 + gained)
                status = env.textarena_env._check_status()
                sub = (1.0 if status == "win" else env.textarena_env._get_percentage_completion() if status == "lose"
                       else tree_value(env, nxt, 12 + gained, left - 1, 0, target))
                expected += p * sub
        assert v == pytest.approx(expected), DIRECTIONS[index]


def test_random_play_reference():
    assert Game2048Game.random_pass_rate(EnvConfig(game="g2048")) == 0.0  # 2048 is out of reach in 5 turns
    config = EnvConfig(game="g2048", g2048_target=8, max_turns=3)
    simulated = Game2048Game.random_pass_rate(config)

    @cache
    def win(board, left: int, errs: int) -> float:
        if left == 0:
            return 0.0
        total = 0.0
        for d in DIRECTIONS:
            slid, _ = slide(board, d)
            if slid == board:
                total += win(board, left - 1, errs + 1) if errs < 1 else 0.0
                continue
            for nxt, p in spawn_outcomes(slid):
                total += p * (1.0 if max(max(r) for r in nxt) >= 8 else 0.0 if stuck(nxt) else win(nxt, left - 1, 0))
        return total / 4

    env = game(g2048_target=8, max_turns=3)
    exact = []
    for seed in heldout_seeds():
        env.reset(seed)
        exact.append(win(env.board(), 3, 0))
    p, n = sum(exact) / len(exact), 8 * len(exact)
    assert 0 < p < 1 and simulated == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))
