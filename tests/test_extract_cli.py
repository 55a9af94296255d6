"""`oel experience show|diff`, the Wilson interval, and the in-context curve with a scripted policy."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from oel.backends.base import Generation, SamplingParams
from oel.cli import main
from oel.envs import EnvConfig
from oel.evaluate.curve import CurveConfig, default_steps, evaluate_curve, wilson_interval
from oel.extract import ExtractCommandConfig, extract_command
from oel.trajectory import Message

from test_extract import ScriptedExtractor, lesson_per_game, make_traj


@pytest.fixture
def store(tmp_path):
    cfg = ExtractCommandConfig(out_dir=str(tmp_path / "store"), num_runs=2, num_trajectories=4, budget_tokens=20,
                               max_input_tokens=4000, use_step=3)
    extract_command(cfg, [make_traj(i) for i in range(1, 5)], ScriptedExtractor(lesson_per_game))
    return tmp_path / "store"


def test_show_prints_every_run_at_n_use(store, capsys):
    assert main(["experience", "show", str(store)]) == 0
    out = capsys.readouterr().out
    assert "showing step 3 (N_use = 3)" in out and out.count("== ") == 2
    assert "[step 3 from t3] - EXPERIENCE ITEM: lesson from T3" in out


def test_show_one_run_dir_and_step(store, capsys):
    assert main(["experience", "show", str(store / "round_000" / "run_01"), "--step", "1"]) == 0
    out = capsys.readouterr().out
    assert "step_001.json" in out and "lesson from T1" in out and "lesson from T2" not in out


def test_diff_command(store, capsys):
    run = store / "round_000" / "run_00"
    assert main(["experience", "diff", f"{run}@1", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "2 added, 1 removed, 0 unchanged"
    assert "- - EXPERIENCE ITEM: lesson from T1" in out and "+ - EXPERIENCE ITEM: lesson from T4" in out


def test_corrupt_file_is_one_line_cli_error(store, capsys):
    path = store / "round_000" / "run_00" / "step_002.json"
    data = json.loads(path.read_text())
    data["items"][0]["step_added"] = 0
    path.write_text(json.dumps(data))
    assert main(["experience", "show", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and "item 0 (id 'r0-k0-s1-0'): step_added" in err


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 64)
    assert lo == 0.0 and hi == pytest.approx(0.0565, abs=5e-4)  # docs/method.md: 0/64 -> 0-5.7%
    lo, hi = wilson_interval(4, 64)
    assert lo == pytest.approx(0.0245, abs=5e-4) and hi == pytest.approx(0.150, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_default_steps_include_the_last():
    assert default_steps(8, 4) == [0, 4, 8]
    assert default_steps(10, 4) == [0, 4, 8, 10]


class KnowledgeFollower:
    """A scripted policy: walks the 3x3 lake down-down-right-right only when it sees 'Experience:'."""

    model_id = "follower"

    def __init__(self) -> None:
        self.calls = 0

    def chat(self, prompts: Sequence[Sequence[Message]], params: SamplingParams) -> list[Generation]:
        out = []
        for chat in prompts:
            self.calls += 1
            text = chat[-1].content
            out.append(Generation("[down]" if "Experience:" in text else "[up]", 10, 1))
        return out


def test_curve_writes_table_and_plot_and_resumes(store, tmp_path):
    cfg = CurveConfig(store=str(store), steps=[0, 2], num_maps=4, env=EnvConfig(game="frozenlake"),
                      out_dir=str(tmp_path / "curve"))
    policy = KnowledgeFollower()
    points = evaluate_curve(cfg, policy)
    assert [p.step for p in points] == [0, 2] and all(p.episodes == 4 for p in points)
    assert points[0].passed == 0  # [up] at the top edge twice: two invalid moves end the game
    assert points[0].scored_moves == 8 and points[0].optimal_moves == 0 and points[0].move_quality == 0.0
    assert points[1].scored_moves > 0  # scored from the replayed solver positions
    for name in ("curve.csv", "curve.md", "curve.png", "curve.json", "step_000.jsonl", "step_002.jsonl"):
        assert (tmp_path / "curve" / name).exists()
    assert "| step i | pass rate |" in (tmp_path / "curve" / "curve.md").read_text()
    calls = policy.calls
    again = evaluate_curve(cfg, policy)
    assert policy.calls == calls and again == points  # both points reused from disk


def test_curve_plays_identical_knowledge_once(tmp_path):
    cfg = ExtractCommandConfig(out_dir=str(tmp_path / "same"), num_runs=1, num_trajectories=3, budget_tokens=100,
                        max_input_tokens=4000)
    extract_command(cfg, [make_traj(i) for i in range(1, 4)],
                  ScriptedExtractor(lambda t, p: "- EXPERIENCE ITEM: the only lesson"))
    curve = CurveConfig(store=cfg.out_dir, steps=[0, 1, 3], num_maps=2, out_dir=str(tmp_path / "c"))
    policy = KnowledgeFollower()
    evaluate_curve(curve, policy)
    one_point = KnowledgeFollower()
    evaluate_curve(CurveConfig(store=cfg.out_dir, steps=[1], num_maps=2, out_dir=str(tmp_path / "d")), one_point)
    baseline = KnowledgeFollower()
    evaluate_curve(CurveConfig(store=cfg.out_dir, steps=[0], num_maps=2, out_dir=str(tmp_path / "e")), baseline)
    assert policy.calls == one_point.calls + baseline.calls  # e_1 == e_3: step 3 reused step 1's episodes
    assert (tmp_path / "c" / "step_003.jsonl").read_text() == (tmp_path / "c" / "step_001.jsonl").read_text()
