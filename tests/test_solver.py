"""The BFS solver agrees with the real game, and the calibration numbers it gives are right."""

from __future__ import annotations

import random

import pytest

from oel.envs import EnvConfig, make_env
from oel.envs.analysis import ceiling_report
from oel.envs.policies import OptimalPolicy, RandomPolicy, play_episode
from oel.envs.seeds import heldout_seeds
from oel.envs.solver import (MOVES, LakeState, Status, distance_to_success, is_optimal_move, move_quality,
                             optimal_actions, random_pass_probability, solvable_within, transition)

FIDELITY_EPISODES = 60
SOKOBAN_UNSOLVABLE_HELDOUT = 13
"""Measured: held-out Sokoban maps (6x6, 1 box) that need more than 5 moves or cannot be solved."""

# A 3x3 lake with holes at (0,1) and (1,1):  P H .
#                                           . H .
#                                           . . G     the only way: down, down, right, right.
LAKE = LakeState(size=3, holes=frozenset({(0, 1), (1, 1)}), goal=(2, 2), player=(0, 0))


@pytest.mark.parametrize("name", ["frozenlake", "sokoban"])
def test_solver_model_matches_the_real_game(name: str) -> None:
    """Random moves through the real TextArena game: the solver predicts every resulting state."""
    env = make_env(EnvConfig(game=name, max_turns=8, invalid_moves_tolerated=8))
    rng = random.Random(0)
    for episode in range(FIDELITY_EPISODES):
        env.reset(heldout_seeds()[episode % 128])
        while True:
            before = env.solver_state()
            action = rng.choice(list(MOVES))
            predicted, status = transition(before, action)
            result = env.step(action)
            assert env.solver_state() == predicted, (episode, action)
            if status is Status.INVALID:
                assert "invalid move" in result.feedback
            if status in (Status.WON, Status.LOST):
                assert result.done and result.passed == (status is Status.WON)
            if result.done:
                break
            assert status in (Status.MOVED, Status.INVALID)


def test_hand_made_lake() -> None:
    assert optimal_actions(LAKE) == ["[down]", "[down]", "[right]", "[right]"]
    assert distance_to_success(LAKE) == 4
    assert solvable_within(LAKE, 4) and not solvable_within(LAKE, 3)
    assert is_optimal_move(LAKE, "[down]")
    assert not is_optimal_move(LAKE, "[right]")    # into a hole
    assert not is_optimal_move(LAKE, "[up]")       # into the wall
    assert not is_optimal_move(LAKE, None)
    assert move_quality(LAKE, ["[up]", "[down]", None, "[down]", "[right]", "[right]"]) == \
        [False, True, False, True, True, True]
    blocked = LakeState(size=3, holes=frozenset({(0, 1), (1, 0)}), goal=(2, 2), player=(0, 0))
    assert distance_to_success(blocked) is None and optimal_actions(blocked) is None
    assert not is_optimal_move(blocked, "[down]")


def test_random_pass_probability_by_hand() -> None:
    """On LAKE only down,down,right,right wins; walls on the way let the streak rule matter."""
    # Exactly 4 turns: each move must be right, 1/4 each.
    assert random_pass_probability(LAKE, 4) == pytest.approx(0.25**4)
    # 5 turns: the one spare turn can only be a tolerated wall hit (a detour costs two turns).
    # Wall moves before each needed move: (0,0) up/left, (1,0) left, (2,0) down/left, (2,1) down -> 6.
    five = 0.25**4 + 6 * 0.25**5
    assert random_pass_probability(LAKE, 5) == pytest.approx(five)
    assert random_pass_probability(LAKE, 5, invalid_moves_tolerated=0) == pytest.approx(0.25**4)


def test_optimal_policy_passes_every_heldout_frozenlake_map() -> None:
    env = make_env(EnvConfig(game="frozenlake"))
    for seed in heldout_seeds():
        episode = play_episode(env, OptimalPolicy(), seed)
        assert episode.passed, (seed, episode.outcome)
        assert len(episode.steps) == 4


def test_optimal_policy_passes_every_solvable_heldout_sokoban_map() -> None:
    env = make_env(EnvConfig(game="sokoban"))
    unsolvable = 0
    for seed in heldout_seeds():
        env.reset(seed)
        solvable = solvable_within(env.solver_state(), 5)
        episode = play_episode(env, OptimalPolicy(), seed)
        assert episode.passed == solvable, (seed, episode.outcome)
        unsolvable += not solvable
    assert unsolvable == SOKOBAN_UNSOLVABLE_HELDOUT


def test_random_policy_plays_through_the_env() -> None:
    env = make_env(EnvConfig(game="frozenlake"))
    episode = play_episode(env, RandomPolicy(seed=1), 0)
    assert episode.steps[-1].done and 1 <= len(episode.steps) <= 5
    assert all(r in MOVES for r in episode.responses)


def test_ceiling_report_exact_random_matches_sampling() -> None:
    report = ceiling_report(EnvConfig(game="sokoban"), heldout_seeds(32), random_episodes_per_map=25)
    assert report.optimal_passed == report.solvable
    sampled = report.random_passed / report.random_episodes
    # 800 episodes: the standard error is ~1.4 points; allow 4.
    assert abs(sampled - report.random_pass_rate_exact) < 0.04
    assert "exact expectation" in "\n".join(report.lines())
