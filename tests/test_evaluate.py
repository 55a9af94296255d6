"""Held-out game evaluation: the metrics on hand-computed cases, and evaluate_games end to end
with scripted backends (no model): move quality on a real held-out map, knowledge routing,
resume after a crash, idempotence, refusing a directory made with other settings, the CLI."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from oel.backends.base import Generation, SamplingParams
from oel.cli import build_parser
from oel.config import to_dict
from oel.envs import EnvConfig
from oel.envs.solver import LakeState
from oel.errors import ConfigError
from oel.evaluate import (EvaluateCommandConfig, EvaluateConfig, GamesConfig, IFEvalConfig, episode_move_marks, evaluate,
                            evaluate_games, evaluation_table, move_quality, summarise, wilson_ci)
from oel.knowledge import Knowledge
from oel.layout import GAME_TRAJECTORIES as TRAJECTORIES_FILE
from oel.trajectory import Message, Trajectory, Turn, read_trajectories

# P H .      holes at (0,1) and (1,1); the only winning path is down, down, right, right.
# . H .
# . . G
LAKE = LakeState(size=3, holes=frozenset({(0, 1), (1, 1)}), goal=(2, 2), player=(0, 0))
MOVES = ("[up]", "[down]", "[left]", "[right]")


def _traj(actions: Sequence[str | None], *, passed: bool = False, sample: int = 0, tokens: int = 3,
          end: str = "hole", tid: str = "t") -> Trajectory:
    prompt = [Message(role="user", content="obs")]
    turns = [Turn(prompt=prompt, observation="obs", response=a or "?", action=a, response_tokens=tokens)
             for a in actions]
    return Trajectory(id=tid, env_id="FrozenLake-v0-raw", seed=0, sample=sample, model_id="m", turns=turns,
                      outcome="x", passed=passed, meta={"end_reason": end})


# ---- pure metrics ------------------------------------------------------------------------------

def test_wilson_ci_hand_computed() -> None:
    # p = 0: centre = half = (z^2/2n) / (1 + z^2/n) = 0.19207 / 1.38415 = 0.13877.
    assert wilson_ci(0, 10) == pytest.approx((0.0, 0.27754), abs=1e-5)
    # p = 1/2: centre 0.5, half = z*sqrt(0.025 + z^2/400) / 1.38415 = 0.26341.
    assert wilson_ci(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_ci(10, 10) == pytest.approx((0.72246, 1.0), abs=1e-5)
    # docs/method.md's measured rows: 0/64 -> 0-5.7%, 1/64 -> 0.3-8.3%, 4/64 -> 2.5-15%.
    assert wilson_ci(0, 64)[1] == pytest.approx(0.057, abs=5e-4)
    assert wilson_ci(1, 64) == pytest.approx((0.003, 0.083), abs=5e-4)
    assert wilson_ci(4, 64) == pytest.approx((0.025, 0.150), abs=5e-4)
    assert wilson_ci(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes must be in 0..n"):
        wilson_ci(3, 2)


def test_move_marks_replay_the_episode() -> None:
    # up: wall (no); down: on the path; None: no move (no); down, right, right: on the path -> win.
    traj = _traj(["[up]", "[down]", None, "[down]", "[right]", "[right]"])
    assert episode_move_marks(LAKE, traj) == [False, True, False, True, True, True]
    # right at the start walks into the hole at (0,1): not optimal, and the replay stops there.
    assert episode_move_marks(LAKE, _traj(["[right]"])) == [False]
    # From (1,0) after down, [right] is the hole; [up] is legal but moves away from the goal.
    assert episode_move_marks(LAKE, _traj(["[down]", "[up]", "[down]"])) == [True, False, True]


def test_move_quality_pools_all_turns() -> None:
    pooled = move_quality([[False, True, False, True, True, True], [False, False]])
    assert (pooled.optimal, pooled.moves) == (4, 8) and pooled.share == 0.5
    assert move_quality([]).share is None


def test_summarise_hand_computed() -> None:
    trajs = [
        _traj(["[down]", "[down]"], passed=True, sample=0, tokens=4, end="goal", tid="a"),
        _traj(["[right]"], sample=0, tokens=2, end="hole", tid="b"),
        _traj([None, None, "[up]"], sample=1, tokens=6, end="invalid_moves", tid="c"),
        _traj(["[up]"], sample=1, tokens=2, end="hole", tid="d"),
    ]
    marks = {"a": [True, True], "b": [False], "c": [False, False, False]}  # "d": no solver -> not scored
    s = summarise(trajs, marks, seed_of={0: 7, 1: 9})
    assert (s.episodes, s.passed, s.pass_rate) == (4, 1, 0.25)
    assert (s.ci_low, s.ci_high) == pytest.approx(wilson_ci(1, 4))
    assert [(p.seed, p.episodes, p.passed) for p in s.per_seed] == [(7, 2, 1), (9, 2, 0)]
    assert s.seed_mean == 0.25 and s.seed_std == pytest.approx(0.35355, abs=1e-5)  # stdev(0.5, 0)
    assert (s.turns, s.response_tokens) == (7, 8 + 2 + 18 + 2)
    assert s.tokens_per_turn == pytest.approx(30 / 7) and s.steps_per_episode == 7 / 4
    assert s.end_reasons == {"goal": 1, "hole": 2, "invalid_moves": 1}
    assert (s.optimal_moves, s.scored_moves, s.move_quality) == (2, 6, pytest.approx(1 / 3))
    assert s.first_moves == {"[down]": 1, "[right]": 1, "[up]": 1, "none": 1}
    with pytest.raises(ValueError, match="no trajectories"):
        summarise([])


# ---- evaluate_games with scripted backends -----------------------------------------------------

class FixedBackend:
    """Always gives the same answer; records every prompt; can be told to crash after n calls."""

    model_id = "fixed"

    def __init__(self, answer: str, crash_after: int | None = None) -> None:
        self.answer, self.crash_after, self.calls = answer, crash_after, 0
        self.prompts: list[str] = []

    def chat(self, prompts: Sequence[Sequence[Message]], params: SamplingParams) -> list[Generation]:
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.prompts += [p[-1].content for p in prompts]
        return [Generation(self.answer, prompt_tokens=100, completion_tokens=2) for _ in prompts]


class SeededBackend(FixedBackend):
    """A random move per row, drawn from the row's own seed: episodes do not depend on batching."""

    model_id = "seeded"

    def __init__(self, crash_after: int | None = None) -> None:
        super().__init__("", crash_after)

    def chat_with_seeds(self, prompts: Sequence[Sequence[Message]], params: SamplingParams,
                        seeds: Sequence[int]) -> list[Generation]:
        self.chat(prompts, params)
        return [Generation(random.Random(s).choice(MOVES + ("no idea",)), 100, 3) for s in seeds]


def test_held_out_map_zero_hand_computed(tmp_path: Path) -> None:
    """Held-out map 0 is  P . . / . H . / . H G : only right, right, down, down wins."""
    right = evaluate_games(FixedBackend("I go [right]"), EnvConfig(), GamesConfig(num_maps=1, sampling_seeds=[0]),
                           tmp_path / "right")
    m = right.metrics
    # right, right (both on the path), then two walls in a row end the game.
    assert (m.scored_moves, m.optimal_moves, m.move_quality) == (4, 2, 0.5)
    assert m.end_reasons == {"invalid_moves": 1} and m.passed == 0 and m.steps_per_episode == 4
    assert m.tokens_per_turn == 2 and right.template == "policy_grid_v1" and right.knowledge_texts == 0
    # random play at the same four positions: one optimal move of four at each ([right], [right], [down], [down])
    assert m.random_move_quality == pytest.approx(0.25)
    from oel.envs.solver import random_pass_probability

    start = LakeState(size=3, holes=frozenset({(1, 1), (2, 1)}), goal=(2, 2), player=(0, 0))
    assert m.random_pass_rate == pytest.approx(random_pass_probability(start, 5, 1)) and 0 < m.random_pass_rate < 0.05
    # one map: the map bootstrap cannot vary, the interval is the point
    assert m.move_quality_ci_low == m.move_quality_ci_high == 0.5
    down = evaluate_games(FixedBackend("[down]"), EnvConfig(), GamesConfig(num_maps=1, sampling_seeds=[0]),
                          tmp_path / "down")
    # down leaves the only path at once; down again, then the bottom wall twice.
    assert (down.metrics.optimal_moves, down.metrics.scored_moves) == (0, 4)


def test_knowledge_texts_alternate_over_maps(tmp_path: Path) -> None:
    backend = FixedBackend("[up]")
    result = evaluate_games(backend, EnvConfig(), GamesConfig(num_maps=4, sampling_seeds=[0, 1]), tmp_path,
                            knowledge=["- EXPERIENCE ITEM: alpha", "- EXPERIENCE ITEM: beta"])
    assert result.template == "teacher_grid_v1" and result.knowledge_texts == 2
    assert result.metrics.episodes == 8 and [s.seed for s in result.metrics.per_seed] == [0, 1]
    first_turns = [p for p in backend.prompts if "[Player]" not in p]
    assert sum("alpha" in p for p in first_turns) == sum("beta" in p for p in first_turns) == 4
    assert all("Experience:" in p for p in backend.prompts)


def test_resume_after_crash_equals_uninterrupted_run(tmp_path: Path) -> None:
    cfg = GamesConfig(num_maps=6, sampling_seeds=[3, 4], batch_size=4)
    whole = evaluate_games(SeededBackend(), EnvConfig(), cfg, tmp_path / "whole")
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate_games(SeededBackend(crash_after=5), EnvConfig(), cfg, tmp_path / "cut")
    partial = read_trajectories(tmp_path / "cut" / TRAJECTORIES_FILE)
    assert 0 < len(partial) < 12
    resumed = evaluate_games(SeededBackend(), EnvConfig(), cfg, tmp_path / "cut")
    assert resumed.resumed_episodes == len(partial)
    assert resumed.metrics == whole.metrics
    ids = [t.id for t in read_trajectories(tmp_path / "cut" / TRAJECTORIES_FILE)]
    assert len(ids) == len(set(ids)) == 12


def test_finished_result_is_returned_without_playing(tmp_path: Path) -> None:
    cfg = GamesConfig(num_maps=2, sampling_seeds=[0])
    first = evaluate_games(FixedBackend("[right]"), EnvConfig(), cfg, tmp_path)
    again = evaluate_games(FixedBackend("[right]", crash_after=0), EnvConfig(), cfg, tmp_path)
    assert again == first


def test_other_settings_are_refused_unless_overwrite(tmp_path: Path) -> None:
    evaluate_games(FixedBackend("[right]"), EnvConfig(), GamesConfig(num_maps=2, sampling_seeds=[0]), tmp_path)
    other = GamesConfig(num_maps=3, sampling_seeds=[0], sampling=SamplingParams(temperature=0.5))
    with pytest.raises(ConfigError, match=r"differing: num_maps, sampling.temperature"):
        evaluate_games(FixedBackend("[right]"), EnvConfig(), other, tmp_path)
    redone = evaluate_games(FixedBackend("[down]"), EnvConfig(), other, tmp_path, overwrite=True)
    assert redone.metrics.episodes == 3


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"games.num_maps: must be in 1..128, got 0"):
        GamesConfig(num_maps=0)
    with pytest.raises(ConfigError, match=r"games.sampling_seeds: seeds must be distinct"):
        GamesConfig(sampling_seeds=[1, 1])
    with pytest.raises(ConfigError, match=r"ifeval.num_prompts: must be in 1..541"):
        IFEvalConfig(num_prompts=600)


def test_evaluate_writes_evaluation_json_and_table(tmp_path: Path) -> None:
    knowledge = tmp_path / "knowledge.txt"
    knowledge.write_text("- EXPERIENCE ITEM: the goal G is bottom-right\n", encoding="utf-8")
    config = EvaluateConfig(games=GamesConfig(num_maps=3, sampling_seeds=[0, 1]), ifeval=IFEvalConfig(enabled=False))
    result = evaluate(FixedBackend("[right]"), config, env=EnvConfig(), out_dir=tmp_path / "eval",
                      knowledge=Knowledge.read([knowledge]))
    assert result.games is not None and result.games_knowledge is not None and result.ifeval is None
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text(encoding="utf-8"))
    assert saved["games"]["metrics"]["episodes"] == 6 and saved["games_knowledge"]["knowledge_texts"] == 1
    # the record is the run as `oel evaluate`'s config: its keys, in their order
    assert saved["config"]["games"]["num_maps"] == 3 and saved["config"]["knowledge_file"] == str(knowledge)
    assert list(saved["config"]) == list(EvaluateCommandConfig.field_order())
    assert saved["config"] == to_dict(EvaluateCommandConfig(**to_dict(config), knowledge_file=str(knowledge),
                                                            out_dir=str(tmp_path / "eval")))
    table = evaluation_table(result)
    assert "| no knowledge |" in table and "| with knowledge |" in table and "Wilson" in table
    assert "| [right] 6 |" in table  # every episode opened with the one answer the backend gives


def test_cli_registers_evaluate(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "games.num_maps" in out and "ifeval.subset" in out and "knowledge_file" in out


def test_sokoban_moves_are_scored_too(tmp_path: Path) -> None:
    result = evaluate_games(FixedBackend("[left]"), EnvConfig(game="sokoban"),
                            GamesConfig(num_maps=4, sampling_seeds=[0]), tmp_path)
    m = result.metrics
    assert result.env_id == "Sokoban-v0-raw" and m.scored_moves == m.turns and m.move_quality is not None


def test_diff_keys_names_nested_entries() -> None:
    from oel.provenance import diff_keys

    old = {"model": "a", "env": {"game": "frozenlake", "max_turns": 5}, "seeds": [0]}
    new = {"model": "a", "env": {"game": "frozenlake", "max_turns": 8}, "seeds": [0, 1], "extra": 1}
    assert diff_keys(old, new) == ["env.max_turns", "extra", "seeds"]
    assert diff_keys(old, old) == []


def test_bootstrap_intervals() -> None:
    from oel.evaluate.metrics import bootstrap_mean_ci, cluster_ratio_ci

    lo, hi = bootstrap_mean_ci([0.0, 1.0] * 20)
    assert lo < 0.5 < hi and hi - lo < 0.4
    assert bootstrap_mean_ci([0.3] * 5) == pytest.approx((0.3, 0.3))
    # clusters of very different size: the interval is around the POOLED ratio 11/20, not the mean of ratios
    lo, hi = cluster_ratio_ci([1, 10] * 10, [10, 10] * 10)
    assert lo < 11 / 20 < hi
    wide = cluster_ratio_ci([1, 10] * 3, [10, 10] * 3)
    assert wide[1] - wide[0] > hi - lo  # fewer maps, wider interval
    with pytest.raises(ValueError):
        cluster_ratio_ci([1], [0])
