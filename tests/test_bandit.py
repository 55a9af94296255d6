"""Bandit as oel plays it: the real TextArena game, its broken reward corrected, parsing, outcomes,
and the oracle (the hidden chances) pinned against what the real game pays out."""

from __future__ import annotations

import math
import random

import pytest

from oel.envs import EnvConfig
from oel.envs.bandit import ANSWERS, BUTTONS, BanditGame
from oel.errors import ConfigError, EnvironmentTextError
from oel.evaluate.answer_probes import label, played_probes, reference_policy
from game_helpers import game_factory

SEED = 1_000_000


game = game_factory("bandit", BanditGame, max_turns=4)


def test_rules_presses_and_parsing():
    env = game()
    first = env.reset(SEED)
    assert first.startswith("You are in a room with 5 buttons: red, blue, green, yellow, purple.")
    assert "You have 3 time steps" in first  # max_turns - 1 presses, then the final choice
    assert env.parse("<think>[red]</think> I press [ Blue ]") == "[blue]"
    assert env.parse("[orange]") is None and env.parse("blue") is None
    result = env.step("[RED]")
    assert result.action == "[red]" and result.feedback.startswith("The game replied: You pressed the red button")


def test_hidden_rules():
    first = game(hide_rules=True).reset(SEED)
    assert "Bernoulli" not in first and "[red]" in first


def test_the_final_choice_is_scored_as_meant():
    env = game()
    env.reset(SEED)
    best = env.best()
    worst = min(BUTTONS, key=lambda b: env.means()[b])
    for _ in range(3):
        env.step("[yellow]")
    result = env.step(f"[{best[0]}]")
    assert result.done and result.passed and result.reward == 1.0
    assert env.textarena_env.state.rewards[0] == 0.0  # TextArena's own: the regret, 0 for the best
    assert result.outcome.startswith(f"Success: your final choice, {best[0]}, was the best button")
    assert "Your presses paid: yellow " in result.outcome

    env.reset(SEED)
    for _ in range(3):
        env.step("[yellow]")
    result = env.step(f"[{worst}]")
    means = env.means()
    assert result.done and not result.passed and result.reward == 0.0
    assert env.textarena_env.state.rewards[0] == pytest.approx(max(means.values()) - means[worst])  # (broken)
    assert result.outcome.startswith(f"Failure: your final choice, {worst}, was not the best button")


def test_invalid_answers_and_the_turn_cap():
    env = game()
    env.reset(SEED)
    assert not env.step("[orange]").done  # forgiven once
    result = env.step("pass")
    assert result.done and result.reward == 0.0 and result.outcome.startswith("Failure: 2 invalid answers in a row")

    env.reset(SEED)
    env.step("[red]")
    env.step("[orange]")  # an invalid answer uses one of our turns, not one of the game's presses
    env.step("[red]")
    result = env.step("[red]")
    assert result.done and not result.passed and result.reward == 0.0 and "turn limit (4 turns)" in result.outcome


def test_a_changed_rules_text_and_a_game_that_does_not_exist():
    env = game()
    env.textarena_env._generate_player_prompt = lambda player_id, game_state: "Press red: it pays best."
    with pytest.raises(EnvironmentTextError, match="rules prompt is not the verified text"):
        env.reset(SEED)
    with pytest.raises(ConfigError, match="game: expected one of"):
        EnvConfig(game="bandits")  # type: ignore[arg-type]


def test_same_seed_same_chances_and_payouts():
    a, b = game(), game()
    a.reset(SEED + 3)
    b.reset(SEED + 3)
    assert a.means() == b.means()
    assert [a.step("[red]").feedback for _ in range(3)] == [b.step("[red]").feedback for _ in range(3)]


# ---- the oracle against the real game --------------------------------------------------------


def test_hidden_chances_are_what_the_game_pays():
    """Each button pressed 400 times in one long real episode pays out at its hidden chance."""
    presses = 400
    env = game(max_turns=len(BUTTONS) * presses + 1)
    env.reset(SEED)
    means = env.means()
    assert max(means.values()) == pytest.approx(0.55) and sorted(means.values())[-2] <= 0.45
    for button in BUTTONS:
        paid = sum("reward of 1.0" in env.step(f"[{button}]").feedback for _ in range(presses))
        p = means[button]
        assert paid / presses == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / presses)), button


def test_labels_and_random_play_in_the_real_game():
    env = game()
    env.reset(SEED)
    probe = label(env, "k", SEED)
    means = env.means()
    assert list(probe.value) == [means[b] for b in BUTTONS]
    assert probe.ok == probe.good == tuple(b in env.best() for b in BUTTONS) and sum(probe.ok) == 1
    config = EnvConfig(game="bandit", max_turns=3)
    probes = played_probes(config, [SEED, SEED + 1], reference_policy(config))
    assert len(probes) == 6 and all(p.answers == ANSWERS and not any(p.invalid) for p in probes)

    rng, wins, n = random.Random(3), 0, 2000
    env = game(max_turns=3)
    for seed in range(SEED, SEED + n):
        env.reset(seed)
        result = None
        while not env.done:
            result = env.step(rng.choice(ANSWERS))
        wins += bool(result and result.passed)
    exact = BanditGame.random_pass_rate(config)
    assert exact == 0.2
    assert wins / n == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / n))
