"""The BFS solver agrees with the real game, and the calibration numbers it gives are right."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from oel.envs import EnvConfig, make_env
from oel.envs.analysis import ceiling_report
from oel.envs.policies import OptimalPolicy, RandomPolicy, play_episode
from oel.envs.seeds import heldout_seeds
from oel.envs.solver import (MOVES, LakeState, Status, blind_pass_probability, distance_to_success, is_optimal_move,
                             move_quality, optimal_actions, random_pass_probability, solvable_within, transition)

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


def _brute_force_blind_pass(state: LakeState, probs: dict[str, float], turns: int, tolerated: int) -> float:
    """Sum, over all 4^turns answer sequences, the probability of those that win under the episode rules.

    A game that ends early ignores its later answers; their probabilities sum to one, so weighting
    every full sequence by all its answers counts each ended game exactly once.
    """
    total = 0.0
    for seq in itertools.product(list(MOVES), repeat=turns):
        weight = math.prod(probs.get(move, 0.0) for move in seq)
        current, streak = state, 0
        for move in seq:
            current, status = transition(current, move)
            if status is Status.WON:
                total += weight
                break
            if status is Status.MOVED:
                streak = 0
            elif status is Status.INVALID and streak < tolerated:
                streak += 1
            else:  # a hole, or one invalid move too many
                break
    return total


def test_blind_pass_probability_against_enumeration() -> None:
    """The DP equals the sum over all 4^5 answer sequences, for skewed priors and both streak rules."""
    open_lake = LakeState(size=3, holes=frozenset({(0, 2), (2, 0)}), goal=(2, 2), player=(0, 0))
    rng = random.Random(0)
    for state in (LAKE, open_lake):
        weights = [rng.random() for _ in MOVES]
        drawn = {move: w / sum(weights) for move, w in zip(MOVES, weights)}
        for probs in ({"[down]": 0.5, "[right]": 0.5}, {"[up]": 0.1, "[down]": 0.6, "[left]": 0.05, "[right]": 0.25},
                      drawn):
            for tolerated in (0, 1):
                assert blind_pass_probability(state, probs, 5, tolerated) == \
                    pytest.approx(_brute_force_blind_pass(state, probs, 5, tolerated))
    uniform = {m: 0.25 for m in MOVES}
    assert blind_pass_probability(LAKE, uniform, 5) == pytest.approx(random_pass_probability(LAKE, 5))
    # always [down] never wins a lake whose goal is bottom-right; half [down], half [right] on LAKE
    # must go down, down, right, right: 1/16, plus the tolerated wall hit at (2,0) or (2,1): 2 * 1/32
    assert blind_pass_probability(open_lake, {"[down]": 1.0}, 5) == 0.0
    assert blind_pass_probability(LAKE, {"[down]": 0.5, "[right]": 0.5}, 5) == pytest.approx(1 / 16 + 2 / 32)


def test_blind_pass_probability_rejects_bad_priors() -> None:
    with pytest.raises(ValueError, match="unknown moves"):
        blind_pass_probability(LAKE, {"down": 1.0}, 5)
    with pytest.raises(ValueError, match="summing to 1"):
        blind_pass_probability(LAKE, {"[down]": 0.5}, 5)


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
