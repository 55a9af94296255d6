"""TowerOfHanoi as oel plays it: the real TextArena game, parsing, outcomes, and the BFS oracle and
random play's exact pass rate pinned against exhaustive enumeration."""

from __future__ import annotations

import itertools

import pytest

from oel.envs import EnvConfig
from oel.envs.hanoi import (ANSWERS, MOVES, TowerOfHanoiGame, distances, goal, move, move_values,
                            random_pass_probability, start)
from oel.errors import ConfigError, EnvironmentTextError
from oel.evaluate.answer_probes import label, played_probes, reference_policy
from game_helpers import game_factory

SEED = 1_000_000
OPTIMAL_3 = ["[A C]", "[A B]", "[C B]", "[A C]", "[B A]", "[B C]", "[A C]"]


game = game_factory("hanoi", TowerOfHanoiGame, max_turns=14)


def test_observation_parse_and_the_optimal_solution():
    env = game()
    first = env.reset(SEED)
    assert first.startswith("You are playing Tower of Hanoi with 3 disks.") and "A: [3, 2, 1]" in first
    assert env.parse("[a, c] then <think>x</think> [ b c ]") == "[B C]"
    assert env.parse("[A D]") is None and env.parse("move A to C") is None
    result = None
    for i, answer in enumerate(OPTIMAL_3):
        assert env.answer_labels([answer])[1] == (True,), i  # every move of the solution is ok
        result = env.step(answer.lower())
        assert env.towers() == tuple(tuple(x) for x in env.textarena_env.state.game_state["towers"].values())
    assert result is not None and result.done and result.passed and result.reward == 1.0
    assert result.outcome == "Success: you moved all 3 disks to tower C in 7 turns (the fewest possible: 7)."


def test_hidden_rules():
    first = game(hide_rules=True).reset(SEED)
    assert "Tower of Hanoi" not in first and "[A C]" in first and "A: [3, 2, 1]" in first


def test_invalid_and_turn_limit_paths():
    env = game()
    env.reset(SEED)
    first = env.step("[B C]")  # an empty source: forgiven once
    assert not first.done and "empty tower" in first.feedback
    second = env.step("no move")
    assert second.done and not second.passed and second.outcome.startswith("Failure: 2 invalid moves in a row")
    assert "solving from there needed 7 more moves" in second.outcome

    env = game(max_turns=4)
    env.reset(SEED)
    for answer in OPTIMAL_3[:3]:
        assert not env.step(answer).done
    result = env.step(OPTIMAL_3[3])
    assert result.done and not result.passed and "turn limit (4 turns)" in result.outcome
    assert result.reward == pytest.approx(1 / 3)  # TextArena's share: disk 3 sits on C


def test_a_changed_rules_text_and_bad_settings():
    env = game()
    env.textarena_env._generate_player_prompt = lambda player_id, game_state: "Move the smallest disk every other turn."
    with pytest.raises(EnvironmentTextError, match="rules prompt is not the verified text"):
        env.reset(SEED)
    with pytest.raises(ConfigError, match="hanoi_disks"):
        EnvConfig(game="hanoi", hanoi_disks=0)
    with pytest.raises(ConfigError, match="game: expected one of"):
        EnvConfig(game="tower_of_hanoi")  # type: ignore[arg-type]


# ---- the oracle against brute force ---------------------------------------------------------


def all_positions(disks: int):
    """Every assignment of disks to towers (each tower's disks in decreasing order)."""
    for where in itertools.product(range(3), repeat=disks):
        towers = [[], [], []]
        for d in range(disks, 0, -1):
            towers[where[d - 1]].append(d)
        yield tuple(tuple(t) for t in towers)


def solvable_in(towers, disks: int, k: int) -> bool:
    """Depth-first search over every sequence of k legal moves (no BFS, no memo)."""
    if towers == goal(disks):
        return True
    if k == 0:
        return False
    return any(solvable_in(nxt, disks, k - 1) for s, t in MOVES if (nxt := move(towers, s, t)) is not None)


@pytest.mark.parametrize("disks", [1, 2, 3])
def test_bfs_matches_exhaustive_search_and_labels_shortest_moves(disks):
    dist = distances(disks)
    assert len(dist) == 3**disks and dist[start(disks)] == 2**disks - 1
    for towers in all_positions(disks):
        d = next(k for k in range(2**disks + 1) if solvable_in(towers, disks, k))
        assert dist[towers] == d
        values = move_values(towers, disks)
        for (s, t), v in zip(MOVES, values):
            nxt = move(towers, s, t)
            on_path = nxt is not None and d > 0 and solvable_in(nxt, disks, d - 1)
            assert (v == -d) == on_path
            assert v == -(1 + d) if nxt is None else v <= -d


def play_all(disks: int, turns: int) -> float:
    """Share of all 6**turns answer sequences that win the REAL game (each a separate episode)."""
    env = game(hanoi_disks=disks, max_turns=turns)
    wins = 0
    for answers in itertools.product(ANSWERS, repeat=turns):
        env.reset(SEED)
        for a in answers:
            result = env.step(a)
            if result.done:
                wins += result.passed
                break
    return wins / len(ANSWERS) ** turns


@pytest.mark.parametrize("disks,turns", [(1, 2), (2, 3), (2, 4)])
def test_random_pass_probability_matches_every_answer_sequence_in_the_real_game(disks, turns):
    assert random_pass_probability(disks, turns, 1) == pytest.approx(play_all(disks, turns))


def test_probes_from_the_reference_player():
    config = EnvConfig(game="hanoi", max_turns=6)
    probes = played_probes(config, [SEED, SEED + 1], reference_policy(config))
    assert len(probes) == 12  # the reference player makes only legal moves: every turn is a state
    for p in probes:
        assert p.ok == p.good and sum(p.ok) >= 1 and 2 <= sum(p.invalid) <= 4
    env = game()
    env.reset(SEED)
    probe = label(env, "k", SEED)
    assert [a for a, ok in zip(probe.answers, probe.ok) if ok] == ["[A C]"]
    assert [a for a, bad in zip(probe.answers, probe.invalid) if bad] == ["[B A]", "[B C]", "[C A]", "[C B]"]
    assert TowerOfHanoiGame.random_pass_rate(EnvConfig(game="hanoi", max_turns=14)) == pytest.approx(
        random_pass_probability(3, 14, 1))
