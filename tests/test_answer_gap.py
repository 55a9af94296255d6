"""`oel meter` on the small-answer games (the screen): the command against the library calls it is made
of, on a tiny random model, through the real TextArena games."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oel import prompts
from oel.backends.tiny import save_tiny_chat_model
from oel.cli import main
from oel.config import load_config
from oel.envs import EnvConfig
from oel.envs.seeds import round_seeds
from oel.errors import ConfigError
from oel.evaluate.answer_gap import run_answer_gap
from oel.evaluate.answer_meter import measure_answers, paired_answer_gap
from oel.evaluate.answer_probes import played_probes, reference_policy
from oel.evaluate.gap import GapConfig
from oel.evaluate.meter import PromptVariant
from oel.models import ModelConfig, load_model
from oel.trajectory import read_trajectories

pytestmark = pytest.mark.usefixtures("one_thread")

GAMES = 3
BEST_PLAY, ALWAYS_STAND, RANDOM_PLAY = 0.432, 0.381, 0.281
"""Blackjack's exact win chances of a fresh hand (docs/results/answer-games), to three digits."""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model", seed=5)


def _model_keys(tiny_dir: str) -> list[str]:
    return [f"model.name={tiny_dir}", "model.dtype=float32", "model.device=cpu"]


def test_oel_meter_on_blackjack_equals_the_screen_built_from_library_calls(tiny_dir, tmp_path, capsys):
    lessons = tmp_path / "lessons.txt"
    lessons.write_text("Stand when the chance of going over is high.\n")
    out = tmp_path / "meter.json"
    assert main(["meter", "env.game=blackjack", *_model_keys(tiny_dir), f"max_layouts={GAMES}",
                 f"knowledge_file={lessons}", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "| student |" in printed and "| teacher minus control |" in printed
    saved = json.loads(out.read_text())
    env = EnvConfig(game="blackjack")
    probes = played_probes(env, round_seeds(0, "train", GAMES), reference_policy(env))
    loaded = load_model(ModelConfig(name=tiny_dir, dtype="float32", device="cpu"))
    student = measure_answers(loaded.model, loaded.tokenizer, probes, PromptVariant("policy_game_v1", "policy_game_v1"))
    teacher = measure_answers(loaded.model, loaded.tokenizer, probes,
                              PromptVariant("teacher", "teacher_game_v1", lessons.read_text().strip()))
    control = measure_answers(loaded.model, loaded.tokenizer, probes,
                              PromptVariant("control", "teacher_game_v1", prompts.get(prompts.CONTROL_LESSONS).text))
    assert saved["settings"]["student"]["ok"] == pytest.approx(student.mean("ok"), abs=1e-6)
    assert saved["settings"]["teacher"]["value"] == pytest.approx(teacher.mean("value"), abs=1e-6)
    assert saved["settings"]["control"]["dependence_nats"] == pytest.approx(control.dependence(), abs=1e-6)
    expected = paired_answer_gap(teacher, control, "value")
    got = saved["gaps"]["teacher_minus_control"]["value"]
    assert got["diff"] == pytest.approx(expected["diff"], abs=1e-6) and got["episodes"] == GAMES
    assert saved["probes"] == len(probes) and saved["teacher_template"]["name"] == "teacher_game_v1"


def test_visited_games_are_probed_and_their_answers_set_against_the_meter(tiny_dir, tmp_path):
    games = tmp_path / "games.jsonl"
    assert main(["collect", "env.game=blackjack", *_model_keys(tiny_dir), "num_seeds=4", "round=0",
                 "sampling.max_new_tokens=8", f"out={games}"]) == 0
    config = load_config(GapConfig, None, ["env.game=blackjack", *_model_keys(tiny_dir), f"visited={games}",
                                           "control=false"])
    gap = run_answer_gap(config)
    played = [t.action for traj in read_trajectories(games) for t in traj.turns]
    check = gap.meta["played_against_meter"]
    assert check["decisions"] == len(played) == len(gap.settings["student"].scores)
    scored = np.mean([s.p for s in gap.settings["student"].scores], axis=0)
    for i, answer in enumerate(("[Hit]", "[Stand]")):
        assert check["answers"][answer]["observed"] == pytest.approx(played.count(answer) / len(played))
        assert check["answers"][answer]["scored"] == pytest.approx(float(scored[i]))
    assert set(gap.settings) == {"student"}  # no lessons: the state-dependence question only


def test_blackjack_policy_value_reports_the_exact_references(tiny_dir):
    config = load_config(GapConfig, None, ["env.game=blackjack", *_model_keys(tiny_dir), "max_layouts=1",
                                           "policy_value=true"])
    value = run_answer_gap(config).meta["policy_value"]["student"]
    assert (round(value["optimal"], 3), round(value["always_stand"], 3), round(value["random"], 3)) == (
        BEST_PLAY, ALWAYS_STAND, RANDOM_PLAY)
    assert 0.0 <= value["win_rate_as_sampled"] <= BEST_PLAY and 0.0 <= value["win_rate"] <= BEST_PLAY


def test_what_a_small_answer_meter_cannot_take_is_refused_by_key(tiny_dir):
    with pytest.raises(ConfigError, match="policy_value: Blackjack only"):
        load_config(GapConfig, None, ["env.game=guess_number", "policy_value=true"])
    for keys, message in ((["sample_check=4"], "sample_check: the grid games' check"),
                          (["teacher_template=teacher_grid_after_v1", "knowledge_file=x.txt"],
                           "teacher_template: 'teacher_grid_after_v1' is a grid game's prompt")):
        config = load_config(GapConfig, None, ["env.game=blackjack", *_model_keys(tiny_dir), *keys])
        with pytest.raises(ConfigError, match=message):
            run_answer_gap(config)


def test_thought_samples_score_the_answers_after_sampled_thoughts(tiny_dir):
    """The thought format through `oel meter`: the think prompts, N thoughts per state, seeded (a rerun
    gives the same scores), each state's distribution a proper one."""
    keys = ["env.game=guess_number", *_model_keys(tiny_dir), "max_layouts=1", "thought_samples=2", "control=false"]
    first = run_answer_gap(load_config(GapConfig, None, keys))
    again = run_answer_gap(load_config(GapConfig, None, keys))
    student = first.settings["student"]
    assert first.meta["policy_template"]["name"] == "policy_game_think_v1" and student.meta["thought_samples"] == 2
    assert all(s.p.sum() == pytest.approx(1.0) for s in student.scores)
    flat = [x for s in student.scores for x in s.logp]
    assert [x for s in again.settings["student"].scores for x in s.logp] == pytest.approx(flat)
