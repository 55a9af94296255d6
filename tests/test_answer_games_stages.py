"""The small-answer games through the stages: the policy prompt chosen by game, its paired teacher,
the extractor's game words, random play's reference, collection on a tiny model."""

from __future__ import annotations

import torch

from oel import prompts
from oel.backends.base import SamplingParams
from oel.backends.hf import HFBackend
from oel.backends.tiny import tiny_chat_model
from oel.collect.play import CollectCommandConfig, collect_command
from oel.consolidate.teacher import teacher_messages
from oel.envs import EnvConfig
from oel.evaluate.games import answer_game_random_pass_rate
from oel.extract.templates import GAME_STYLE, GRID_STYLE, round_style
from oel.trajectory import Message, Prefix, read_trajectories


def test_policy_prompt_follows_the_game():
    assert prompts.policy_template_for("frozenlake") == "policy_grid_v1"
    assert prompts.policy_template_for("guess_number") == "policy_game_v1"
    assert prompts.policy_template_for("guess_number", "my.txt") == "my.txt"  # a user's choice is kept
    assert CollectCommandConfig(env=EnvConfig(game="blackjack")).prompt == "policy_game_v1"
    assert CollectCommandConfig(env=EnvConfig(game="sokoban")).prompt == "policy_grid_v1"
    assert prompts.knowledge_template_for("policy_game_v1", "teacher_grid_after_v1") == "teacher_game_v1"
    assert prompts.knowledge_template_for("policy_grid_v1", "teacher_grid_after_v1") == "teacher_grid_after_v1"


def test_the_game_prompt_asks_for_the_answer_after_the_game_text():
    text = prompts.get("policy_game_v1").render(observation="GAME TEXT")
    assert text.index("GAME TEXT") < text.index("square brackets")
    teacher = prompts.turn_messages("teacher_game_v1", "GAME TEXT", knowledge="- lesson one")[0].content
    assert teacher.index("- lesson one") < teacher.index("GAME TEXT") < teacher.index("square brackets")


def test_teacher_reads_a_game_prefix_through_the_paired_prompt():
    observation = "You are playing Guess The Number.\nYou answered: [10]\nThe game replied: The target number is lower."
    prompt = tuple(prompts.turn_messages("policy_game_v1", observation))
    prefix = Prefix("t", 1, prompt, observation, "policy_game_v1")
    msgs = teacher_messages(prefix, "- guess lower after 'lower'", template="teacher_grid_after_v1")
    assert msgs == prompts.turn_messages("teacher_game_v1", observation, knowledge="- guess lower after 'lower'")
    assert msgs[-1].role == "user" and "guess lower after" in msgs[-1].content


def test_random_play_reference():
    assert answer_game_random_pass_rate(EnvConfig(game="guess_number")) == 0.25
    assert answer_game_random_pass_rate(EnvConfig(game="guess_number", max_turns=10, guess_max=50)) == 0.2
    assert 0.27 < answer_game_random_pass_rate(EnvConfig(game="blackjack")) < 0.29
    assert answer_game_random_pass_rate(EnvConfig(game="frozenlake")) is None


def test_collect_plays_guess_number_and_the_extractor_gets_game_words(tmp_path):
    model, tok = tiny_chat_model(seed=1, dtype=torch.float32)
    backend = HFBackend(model, tok, model_id="tiny")
    out = tmp_path / "t.jsonl"
    cfg = CollectCommandConfig(env=EnvConfig(game="guess_number", max_turns=2), seeds="extract", num_seeds=2,
                        out=str(out), sampling=SamplingParams(max_new_tokens=6))
    collect_command(cfg, backend)
    trajs = read_trajectories(out)
    assert len(trajs) == 2 and all(t.env_id == "GuessTheNumber-v0-raw" for t in trajs)
    assert all(t.meta["prompt"]["name"] == "policy_game_v1" for t in trajs)
    assert all(t.outcome.startswith(("Success", "Failure")) for t in trajs)
    assert round_style(trajs) is GAME_STYLE
    assert GAME_STYLE.prompt_for("structured") == "extract_game_structured_v1"
    assert "map" not in prompts.get("extract_game_structured_v1").text.lower()
    assert GRID_STYLE.prompt_for("structured") == "extract_structured_v1"


def test_messages_are_plain_user_turns():
    msgs = prompts.turn_messages("policy_game_v1", "x")
    assert msgs == [Message(role="user", content=prompts.get("policy_game_v1").render(observation="x"))]
