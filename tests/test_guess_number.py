"""GuessTheNumber as oel plays it: the real TextArena game, parsing, outcomes, and the oracle
pinned against brute-force enumeration of every target and every guess sequence."""

from __future__ import annotations

import itertools
import random
from functools import cache

import pytest

from oel.envs import EnvConfig
from oel.envs.guess_number import (GuessState, GuessTheNumberGame, answer_values, bisect_pass_probability,
                                   random_pass_probability, win_probability)
from oel.errors import ConfigError, EnvironmentTextError
from oel.evaluate.answer_probes import consistent_guesser, label, played_probes
from game_helpers import game_factory

SEED = 1_000_000


game = game_factory("guess_number", GuessTheNumberGame)


def test_observation_shows_the_rules_and_the_history_in_our_rendering():
    env = game()
    first = env.reset(SEED)
    assert first.startswith("You are Player 0. You are playing Guess The Number.")
    assert "between 1 and 20 within 5 turns" in first
    target = env.target()
    guess = 1 if target != 1 else 2
    result = env.step(f"I will try [{guess}]")
    assert not result.done and result.action == f"[{guess}]"
    assert result.observation.endswith(f"You answered: [{guess}]\nThe game replied: The target number is higher.")
    assert result.feedback == "The game replied: The target number is higher."


def test_hidden_rules_show_only_the_range():
    env = game(hide_rules=True)
    first = env.reset(SEED)
    assert "Guess The Number" not in first and "higher" not in first
    assert "between 1 and 20" in first


def test_parse_takes_the_last_bracketed_number_after_thinking():
    env = game()
    assert env.parse("[3] no, [ 12 ]") == "[12]"
    assert env.parse("<think>[4]</think> my guess is [7] [Player]") == "[7]"
    assert env.parse("seven") is None
    assert env.parse("[007]") == "[7]"


def test_winning_losing_and_invalid_paths():
    env = game()
    env.reset(SEED)
    target = env.target()
    result = env.step(f"[{target}]")
    assert result.done and result.passed and result.reward == 1.0
    assert result.outcome == f"Success: you guessed the secret number {target} in 1 turn."

    env.reset(SEED)
    wrong = [n for n in range(1, 21) if n != target][:5]
    for n in wrong[:4]:
        assert not env.step(f"[{n}]").done
    result = env.step(f"[{wrong[4]}]")
    assert result.done and not result.passed and result.reward is not None and result.reward < 1.0
    assert "turn limit (5 turns)" in result.outcome and f"secret number was {target}" in result.outcome

    env.reset(SEED)
    env.step(f"[{wrong[0]}]")
    second = env.step(f"[{wrong[0]}]")  # a repeat: forgiven once by the game
    assert not second.done and "already guessed" in second.feedback
    third = env.step("no number here")  # a second invalid answer in a row ends it
    assert third.done and not third.passed and third.outcome.startswith("Failure: 2 invalid answers in a row")


def test_a_changed_rules_text_is_refused():
    env = game()
    env.textarena_env._prompt = lambda player_id, game_state: "Guess my number, it is 7."
    with pytest.raises(EnvironmentTextError, match="rules prompt is not the verified text"):
        env.reset(SEED)


def test_bad_settings_fail_in_one_line():
    with pytest.raises(ConfigError, match="game: expected one of"):
        EnvConfig(game="guess_the_number")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="guess_max"):
        EnvConfig(game="guess_number", guess_min=5, guess_max=5)


def test_same_seed_same_target_and_global_random_untouched():
    state = random.getstate()
    a, b = game(), game()
    a.reset(SEED + 7)
    b.reset(SEED + 7)
    assert a.target() == b.target()
    assert random.getstate() == state


# ---- the oracle against brute force ---------------------------------------------------------


@cache
def brute_best(cands: frozenset[int], turns: int, low: int, high: int) -> float:
    """Best win probability by trying every guess in the range at every step (exhaustive)."""
    if not cands or turns == 0:
        return 0.0
    return max(brute_after(cands, turns, g, low, high) for g in range(low, high + 1))


def brute_after(cands: frozenset[int], turns: int, guess: int, low: int, high: int) -> float:
    """Win probability after `guess`, then the best play: enumerate the targets, grouped by the
    reply each would give."""
    total = 1.0 if guess in cands else 0.0
    for side in (frozenset(c for c in cands if c < guess), frozenset(c for c in cands if c > guess)):
        if side:
            total += len(side) * brute_best(side, turns - 1, low, high)
    return total / len(cands)


@pytest.mark.parametrize("high,turns", [(6, 2), (7, 3), (8, 3), (9, 2)])
def test_answer_values_match_exhaustive_search(high, turns):
    low = 1
    # every reachable history of up to two consistent guesses
    for g1, h1 in itertools.product(range(low, high + 1), ("higher", "lower")):
        state = GuessState(low, high, ((g1, h1),))
        cands = frozenset(state.candidates())
        if not cands:
            continue
        values = answer_values(state, [f"[{n}]" for n in range(low, high + 1)], turns)
        for n, v in zip(range(low, high + 1), values):
            assert v == pytest.approx(brute_after(cands, turns, n, low, high)), (g1, h1, n)
        assert max(values) == pytest.approx(win_probability(len(cands), turns))
        assert max(values) == pytest.approx(brute_best(cands, turns, low, high))


def test_pass_probabilities_match_enumeration():
    low, high, turns = 1, 10, 3
    n = high - low + 1
    # a random non-repeating guesser: enumerate every ordering of guesses
    perms = list(itertools.permutations(range(low, high + 1), turns))
    wins = sum(t in perm for t in range(low, high + 1) for perm in perms)
    assert random_pass_probability(low, high, turns) == pytest.approx(wins / (n * len(perms)))
    assert bisect_pass_probability(low, high, turns) == pytest.approx(brute_best(frozenset(range(low, high + 1)), turns, low, high))
    assert bisect_pass_probability(1, 20, 5) == 1.0


def test_probes_label_consistent_answers_from_the_hints():
    probes = played_probes(EnvConfig(game="guess_number"), [SEED, SEED + 1], consistent_guesser)
    assert probes and probes[0].turn == 0 and all(probes[0].ok)
    for p in probes:
        assert len(p.answers) == 20 and sum(p.good) >= 1
        assert all(o for o, g in zip(p.ok, p.good) if g)  # an optimal guess is a consistent one
        assert not any(o and i for o, i in zip(p.ok, p.invalid))


def test_label_reads_what_the_player_was_told():
    env = game()
    env.reset(SEED)
    target = env.target()
    guess = 10 if target < 10 else 11 if target > 11 else 1
    env.step(f"[{guess}]")
    probe = label(env, "k", SEED)
    told = env.player_state().candidates()
    assert target in told
    assert [a for a, ok in zip(probe.answers, probe.ok) if ok] == [f"[{n}]" for n in told]
    assert probe.invalid[guess - 1]
