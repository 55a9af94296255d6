"""Minesweeper as oel plays it: the real TextArena game (mines placed at the first reveal, a mine hit
is an invalid move), parsing, outcomes, and the layout oracle pinned against brute-force enumeration
of every placement of the mines."""

from __future__ import annotations

import random
from itertools import combinations

import pytest

from oel.envs import EnvConfig
from oel.envs.minesweeper import MinesweeperGame, MinesweeperView, neighbours, safe_zone
from oel.errors import ConfigError, EnvironmentTextError
from oel.evaluate.answer_probes import label, played_probes, reference_policy
from game_helpers import game_factory

SEED = 1_000_000


game = game_factory("minesweeper", MinesweeperGame, max_turns=25)


def mines(env: MinesweeperGame) -> set[tuple[int, int]]:
    n = env.config.minesweeper_size
    return {(r, c) for r in range(n) for c in range(n) if env.textarena_env.grid[r][c] == -1}


def test_rules_parse_and_the_safe_first_reveal():
    env = game()
    first = env.reset(SEED)
    assert first.startswith("You are playing the Minesweeper game.") and "Game Board:" in first
    assert env.parse("[2, 3]") == "[2 3]" and env.parse("<think>[0 0]</think> [ 4  1 ]") == "[4 1]"
    assert env.parse("[a b]") is None and env.parse("row 2") is None
    assert all(label(env, "k", SEED).value)  # before the first reveal every cell is safe
    result = env.step("[2 2]")
    assert result.action == "[2 2]" and "You revealed the cell at (2, 2)." in result.feedback
    assert not mines(env) & safe_zone((2, 2), 5) and len(mines(env)) == 5


def test_hidden_rules():
    first = game(hide_rules=True).reset(SEED)
    assert "Minesweeper" not in first and "[2 3]" in first and "Game Board:" in first


def test_revealed_cells_mines_and_the_turn_cap():
    env = game()
    env.reset(SEED)
    env.step("[2 2]")
    assert "already been revealed" in env.step("[2 2]").feedback  # forgiven once
    mine = sorted(mines(env))
    result = env.step(f"[{mine[0][0]} {mine[0][1]}]")  # a second invalid move in a row: a mine ends it
    assert result.done and not result.passed and env.end_reason == "lost"
    assert result.outcome.startswith("Failure: a second invalid move in a row") and "You hit a mine" in result.outcome

    env.reset(SEED)
    env.step("[2 2]")
    hit = env.step(f"[{mine[0][0]} {mine[0][1]}]")
    assert not hit.done and f"You hit a mine at ({mine[0][0]}, {mine[0][1]})" in hit.feedback
    assert env.view().mines_hit == {mine[0]}

    env = game(max_turns=1)
    env.reset(SEED)
    result = env.step("[2 2]")
    assert result.done and not result.passed and "turn limit (1 turns)" in result.outcome


def test_playing_only_certain_cells_wins_some_boards():
    wins = 0
    for seed in range(SEED, SEED + 10):
        env = game()
        env.reset(seed)
        env.step("[2 2]")
        result = None
        while not env.done:
            values, ok, _ = env.answer_labels(env.answers())
            best = max(range(len(values)), key=values.__getitem__)
            if values[best] < 1.0:
                break
            assert ok[best]  # a cell certain to be safe is safe in the true layout
            result = env.step(env.answers()[best])
        if result is not None and result.done and result.passed:
            wins += 1
            assert result.reward == 1.0 and result.outcome.startswith("Success")
    assert wins >= 1


def test_a_changed_rules_text_and_bad_settings():
    env = game()
    env.textarena_env._generate_player_prompt = lambda player_id, game_state: "A cell next to a 0 is safe."
    with pytest.raises(EnvironmentTextError, match="rules prompt is not the verified text"):
        env.reset(SEED)
    with pytest.raises(ConfigError, match="minesweeper_size"):
        EnvConfig(game="minesweeper", minesweeper_size=3)
    with pytest.raises(ConfigError, match="minesweeper_mines"):
        EnvConfig(game="minesweeper", minesweeper_mines=17)
    with pytest.raises(ConfigError, match="minesweeper_mines: the oracle enumerates"):
        EnvConfig(game="minesweeper", minesweeper_size=8, minesweeper_mines=10)
    with pytest.raises(ConfigError, match="game: expected one of"):
        EnvConfig(game="mines")  # type: ignore[arg-type]


# ---- the oracle against brute force ---------------------------------------------------------


def brute_safe_chances(view: MinesweeperView) -> dict:
    """Every placement of the mines anywhere on the board, weighted by TextArena's prior (uniform
    outside the first reveal's 3x3, impossible inside), kept when it shows the same numbers and
    holds every mine hit."""
    cells = [(r, c) for r in range(view.size) for c in range(view.size)]
    zone = safe_zone(view.first, view.size)
    kept = []
    for placed in combinations(cells, view.mines):
        s = set(placed)
        if s & zone or not view.mines_hit <= s or s & set(view.shown):
            continue
        if all(sum(n in s for n in neighbours(cell, view.size)) == k for cell, k in view.shown.items()):
            kept.append(s)
    return {cell: sum(cell not in s for s in kept) / len(kept) for cell in cells}, kept


@pytest.mark.parametrize("size,count,seed", [(5, 3, SEED), (5, 4, SEED + 100), (4, 3, SEED + 200), (4, 2, SEED + 300)])
def test_safe_chances_match_brute_force_at_real_states(size, count, seed):
    """Every state of real games (a random first reveal, then the reference player) until a few
    states past the first reveal have been checked."""
    env, rng, checked, uncertain = game(minesweeper_size=size, minesweeper_mines=count), random.Random(seed), 0, 0
    for episode in range(seed, seed + 30):
        env.reset(episode)
        env.step(f"[{rng.randrange(size)} {rng.randrange(size)}]")
        while not env.done:
            view = env.view()
            expected, kept = brute_safe_chances(view)
            assert mines(env) in kept  # the true layout is one of them
            got = view.safe_chances(10**6)
            for cell, p in expected.items():
                assert got[cell] == pytest.approx(p), cell
            values, ok, invalid = env.answer_labels(env.answers())
            for a, v, o, i in zip(env.answers(), values, ok, invalid):
                cell = tuple(int(x) for x in a.strip("[]").split())
                assert i == (cell in view.shown) and v == (0.0 if i else pytest.approx(expected[cell]))
                assert o == (not i and cell not in mines(env))
            checked += 1
            uncertain += any(0 < p < 1 for p in expected.values())
            env.step(env.reference_answer(rng))
        if checked >= 6 and uncertain >= 2:
            break
    assert checked >= 6 and uncertain >= 2  # states where the chances are not all 0 or 1


def test_probes_and_random_play_reference():
    config = EnvConfig(game="minesweeper", max_turns=4)
    probes = played_probes(config, [SEED, SEED + 1], reference_policy(config))
    assert probes and all(len(p.answers) == 25 and any(p.ok) for p in probes)
    rate = MinesweeperGame.random_pass_rate(config)
    again = MinesweeperGame.random_pass_rate(config)
    assert 0.0 <= rate < 0.2 and rate == again  # seeded: the same simulation
