"""The meter as the games sample it: `sharpen` against transformers' own warpers and against the
project's sampler, and what the evaluation and the report do with it."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from oel.backends.base import SamplingParams
from oel.backends.sampling import PerRowSampler, RowSampling, sample_token
from oel.evaluate.meter import MeterResult, StateScore
from oel.evaluate.sharpen import opening_check, sampled_summary, sharpen, sharpened

SETTINGS = [(0.7, 0.8, 20), (1.0, 1.0, 0), (0.7, 0.8, 2), (1.3, 0.5, 0), (0.4, 0.95, 3), (1.0, 0.3, 4)]


def _hf_reference(p: list[float], temperature: float, top_p: float, top_k: int) -> list[float]:
    """The distribution transformers' generate samples from, warpers applied in its order."""
    scores = torch.log(torch.tensor([p], dtype=torch.float64))
    scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores, -1)[0].tolist()


@pytest.mark.parametrize("temperature,top_p,top_k", SETTINGS)
def test_sharpen_matches_transformers_warpers(temperature, top_p, top_k):
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        p = torch.softmax(torch.randn(4, generator=gen, dtype=torch.float64) * 2, -1).tolist()
        assert sharpen(p, temperature, top_p, top_k) == pytest.approx(_hf_reference(p, temperature, top_p, top_k), abs=1e-9)


def test_sharpen_matches_what_the_project_sampler_draws():
    """20,000 draws of the per-row sampler on four logits: the frequencies are the sharpened distribution."""
    p = [0.05, 0.85, 0.02, 0.08]
    rows = [RowSampling(0.7, 0.8, 20, seed) for seed in range(20_000)]
    sampler = PerRowSampler(rows)
    logits = torch.log(torch.tensor(p))
    counts = [0] * 4
    for row, gen in zip(sampler.rows, sampler.generators):
        counts[sample_token(logits, row, gen)] += 1
    assert [c / len(rows) for c in counts] == pytest.approx(sharpen(p, 0.7, 0.8, 20), abs=0.01)
    assert sharpen(p, 0.7, 0.8, 20) == [0.0, 1.0, 0.0, 0.0], "an .85 answer is the only one top-p 0.8 keeps at T 0.7"


def test_sharpen_edge_cases():
    p = [0.1, 0.4, 0.4, 0.1]
    assert sharpen(p, 0.0) == [0.0, 1.0, 0.0, 0.0], "greedy takes the first of the largest"
    assert sharpen(p, 1.0) == pytest.approx(p)
    assert sharpen([0.0, 0.5, 0.5, 0.0], 0.7) == pytest.approx([0.0, 0.5, 0.5, 0.0])
    for bad in ((-0.1, 0.8, 0), (0.7, 0.0, 0), (0.7, 1.5, 0), (0.7, 0.8, -1)):
        with pytest.raises(ValueError, match="sharpen"):
            sharpen(p, *bad)


def _result(p_down: float) -> MeterResult:
    """Three maps x two states, [down] optimal at the first of each, the same distribution everywhere."""
    rest = (1 - p_down) / 3
    lp = [math.log(rest), math.log(p_down), math.log(rest), math.log(rest)]
    return MeterResult("m", [StateScore(f"L{i}", step, lp, (False, step == 0, False, step == 1),
                                        (True, False, True, False), (False,) * 4) for i in range(3) for step in (0, 1)])


def test_a_state_blind_bias_plays_as_one_move():
    m = _result(0.85)
    s = sampled_summary(m, SamplingParams())
    assert m.mean("emq") == pytest.approx(0.5 * 0.85 + 0.5 * 0.05)
    assert s["emq"] == pytest.approx(0.5) and s["top_move_share"] == pytest.approx(1.0)
    assert s["moves"]["[down]"] == pytest.approx(1.0) and s["sampling"] == {"temperature": 0.7, "top_p": 0.8, "top_k": 20}
    assert sharpened(m, SamplingParams(temperature=1.0, top_p=1.0, top_k=0)).mean("emq") == pytest.approx(m.mean("emq"))


def test_the_report_warns_when_sampling_turns_a_bias_into_one_move(tmp_path):
    from oel.report.gather import RunData, games_sampling
    from oel.report.tables import collapse_warnings, meter_table

    data = RunData(run_dir=tmp_path, rounds=[0, 1], meters={0: _result(0.4), 1: _result(0.85)})
    warnings = collapse_warnings(data)
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: M_1 puts 85% of its move probability on [down], and")
    assert "becomes 100% [down]" in warnings[0]
    assert "| 50.0%, [down] 100% |" in meter_table(data)
    greedy = RunData(run_dir=tmp_path, rounds=[0, 1], meters=data.meters,
                     sampling=games_sampling("evaluate:\n  games:\n    sampling: {temperature: 0}\n", tmp_path / "c.yaml"))
    assert "becomes 100% [down]" in collapse_warnings(greedy)[0]
    assert "(T 0, top-p 0.8)" in meter_table(greedy)


def test_a_bad_run_config_sampling_is_named(tmp_path):
    from oel.errors import DataError
    from oel.report.gather import games_sampling

    assert games_sampling("", tmp_path / "c.yaml") == SamplingParams()
    with pytest.raises(DataError, match=r"c.yaml: evaluate.games.sampling: top_p"):
        games_sampling("evaluate:\n  games:\n    sampling: {top_p: 2}\n", tmp_path / "c.yaml")
    with pytest.raises(DataError, match=r"c.yaml: not a readable run config"):
        games_sampling("evaluate: [", tmp_path / "c.yaml")


def test_opening_check_sets_the_meter_s_first_moves_against_the_games_by_hand():
    """Two opening states at [down] .85 and a later state that must be ignored; the games opened
    [down] 9 times and [right] once. Sharpened at T 0.7 / top-p 0.8 the .85 answer is the only one."""
    rest = math.log(0.05)
    opening = [StateScore(f"L{i}", 0, [rest, math.log(0.85), rest, rest], (False,) * 4, (False,) * 4, (False,) * 4)
               for i in range(2)]
    later = StateScore("L0", 1, [0.0, -50.0, -50.0, -50.0], (False,) * 4, (False,) * 4, (False,) * 4)
    check = opening_check(MeterResult("m", [*opening, later]), {"[down]": 9, "[right]": 1}, SamplingParams())
    assert check["meter"] == pytest.approx([0.05, 0.85, 0.05, 0.05])
    assert check["meter_sampled"] == pytest.approx([0.0, 1.0, 0.0, 0.0])
    assert check["games"] == pytest.approx([0.0, 0.9, 0.0, 0.1]) and check["games_count"] == 10
    assert check["distance"] == pytest.approx(0.5 * (0.05 + 0.05 + 0.05 + 0.05))
    assert check["distance_sampled"] == pytest.approx(0.1)


def test_evaluate_sets_the_meter_against_the_games_first_moves(tmp_path, one_thread):
    """`oel evaluate` with games and the meter: the opening check lands in evaluation.json and the table."""
    import json

    from oel.backends.hf import HFBackend
    from oel.backends.tiny import tiny_chat_model
    from oel.envs import EnvConfig
    from oel.evaluate import EvaluateConfig, GamesConfig, IFEvalConfig, evaluate, evaluation_table
    from oel.evaluate.config import MeterConfig

    model, tok = tiny_chat_model(seed=3, dtype=torch.float32)
    config = EvaluateConfig(games=GamesConfig(num_maps=2, sampling_seeds=[0], batch_size=2,
                                              sampling=SamplingParams(max_new_tokens=4)),
                            ifeval=IFEvalConfig(enabled=False), meter=MeterConfig(max_layouts=2))
    result = evaluate(HFBackend(model, tok, model_id="tiny"), config, env=EnvConfig(), out_dir=tmp_path / "eval")
    opening = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["meter"]["opening"]
    assert opening["games_count"] == result.games.metrics.episodes == 2
    assert sum(opening["meter"]) == pytest.approx(1.0) and sum(opening["meter_sampled"]) == pytest.approx(1.0)
    assert 0.0 <= opening["distance_sampled"] <= 1.0
    assert "Opening moves u/d/l/r: the 2 games" in evaluation_table(result)
