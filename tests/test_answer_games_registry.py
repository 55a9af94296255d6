"""Every small-answer game is wired the same way: made by name, game words for the extractor, the
game prompts, a reference player whose probes the oracle labels, random play's reference."""

from __future__ import annotations

import pytest

from oel import prompts
from oel.envs import ANSWER_GAMES, EnvConfig, answer_game_class, make_env
from oel.envs.answer_game import TextArenaAnswerGame
from oel.envs.seeds import round_seeds
from oel.evaluate.answer_probes import played_probes, reference_policy
from oel.evaluate.games import answer_game_random_pass_rate
from oel.extract.templates import ANSWER_ENV_IDS

NEW_GAMES = [g for g in ANSWER_GAMES if g not in ("guess_number", "blackjack")]


@pytest.mark.parametrize("game", ANSWER_GAMES)
def test_each_game_is_made_by_name_and_read_with_game_words(game):
    env = make_env(EnvConfig(game=game))
    assert isinstance(env, TextArenaAnswerGame) and type(env) is answer_game_class(game)
    assert env.game_name == game and env.env_id in ANSWER_ENV_IDS
    assert prompts.policy_template_for(game) == "policy_game_v1"


@pytest.mark.parametrize("game", NEW_GAMES)
def test_each_new_game_gives_probes_and_a_random_reference(game):
    config = EnvConfig(game=game, max_turns=4)
    probes = played_probes(config, round_seeds(0, "train", 2), reference_policy(config))
    assert probes
    for p in probes:
        assert len(p.answers) == len(p.ok) == len(p.value) == len(p.invalid) == len(p.good) >= 2
        assert any(p.good) and not any(g and i for g, i in zip(p.good, p.invalid))
    rate = answer_game_random_pass_rate(config)
    assert rate is None or 0.0 <= rate <= 1.0


@pytest.fixture(scope="module")
def tiny():
    import torch

    from oel.backends.tiny import tiny_chat_model

    return tiny_chat_model(seed=5, dtype=torch.float32)


@pytest.mark.parametrize("game", NEW_GAMES)
def test_the_exact_meter_scores_each_new_games_answer_set(game, tiny):
    """What the screen's gate (a) runs, on a tiny random model: every answer of the set scored at
    real probe states, the distribution renormalised over the set."""
    from oel.evaluate.answer_meter import measure_answers
    from oel.evaluate.meter import PromptVariant

    config = EnvConfig(game=game, max_turns=3)
    probes = played_probes(config, round_seeds(0, "train", 1), reference_policy(config))[:2]
    result = measure_answers(*tiny, probes, PromptVariant("policy_game_v1", "policy_game_v1"))
    summary = result.summary()
    assert summary["probes"] == len(probes) and 0.0 <= summary["ok"] <= 1.0 and summary["dependence_nats"] >= 0.0
    assert all(s.p.sum() == pytest.approx(1.0) and len(s.logp) == len(s.probe.answers) for s in result.scores)
