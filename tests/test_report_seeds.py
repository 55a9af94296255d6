"""`oel seeds`: settings over loop seeds, on real tiny loop runs; the two-level bootstrap against enumeration."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest

from oel.backends.tiny import save_tiny_chat_model
from oel.cli import main
from oel.config import load_config
from oel.errors import DataError
from oel.loop import LoopConfig, run_loop
from oel.report.paired import meter_difference
from oel.report.seeds import hierarchical_diff, read_run, seeds_table


def test_hierarchical_diff_matches_the_enumerated_bootstrap_distribution():
    d = np.array([[0.0, 1.0, 0.5], [1.0, 1.0, 0.0]])
    s, h = d.shape
    # every (seed draw, hand draw) is equally likely: the exact bootstrap distribution of the mean
    exact = np.sort([d[np.ix_(si, hi)].mean() for si in itertools.product(range(s), repeat=s)
                     for hi in itertools.product(range(h), repeat=h)])
    mean, lo, hi = hierarchical_diff(d, resamples=40_000)
    assert mean == pytest.approx(d.mean())
    lo_exact, hi_exact = np.quantile(exact, 0.025), np.quantile(exact, 0.975)
    step = np.diff(np.unique(exact)).max()  # the support is discrete: allow one step of it
    assert abs(lo - lo_exact) <= step and abs(hi - hi_exact) <= step
    # one seed: the spread is the hands' alone; identical seeds give the same interval as one
    one = hierarchical_diff(d[:1])
    assert hierarchical_diff(np.vstack([d[:1], d[:1]]))[1:] == pytest.approx(one[1:], abs=1e-12)
    assert hierarchical_diff(np.zeros((3, 4))) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="seeds x hands"):
        hierarchical_diff(np.zeros(3))


def _overrides(model: str, run: Path, *extra: str) -> list[str]:
    return [f"run_dir={run}", "rounds=1", f"model.name={model}", "model.dtype=float32", "model.device=cpu",
            "engine=hf", "tensorboard=false", "env.game=blackjack", "in_context_eval=false",
            "collect.num_seeds=4", "collect.batch_size=4", "collect.sampling.max_new_tokens=4",
            "extract.kind=raw_trajectories", "extract.num_runs=1", "extract.num_trajectories=2",
            "extract.budget_tokens=2000", "consolidate.steps=1", "consolidate.batch_size=2",
            "consolidate.micro_batch_size=2", "consolidate.max_new_tokens=4", "consolidate.save_every=0",
            "evaluate.games.num_maps=6", "evaluate.games.sampling_seeds=[0,1]", "evaluate.games.batch_size=6",
            "evaluate.games.sampling.max_new_tokens=4", "evaluate.ifeval.enabled=false",
            "evaluate.meter.max_layouts=4", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("seeds")
    model = save_tiny_chat_model(root / "model", seed=5)
    lessons = root / "lessons.txt"
    lessons.write_text("Letters are written with a pen.\n")
    out: dict[str, list[Path]] = {"main": [], "control": []}
    for s in (0, 1):
        main_run = root / f"main-s{s}"
        reuse = [f"reuse_from={root / 'main-s0'}"] if s else []
        run_loop(load_config(LoopConfig, None, _overrides(model, main_run, f"seed={s}", *reuse)))
        control = root / f"control-s{s}"
        run_loop(load_config(LoopConfig, None, _overrides(model, control, f"seed={s}", f"reuse_from={main_run}",
                                                          f"knowledge_file={lessons}")))
        out["main"].append(main_run)
        out["control"].append(control)
    return out


def test_seeds_table_pairs_runs_by_seed_and_pools_them(runs, tmp_path, capsys):
    first = read_run("main", runs["main"][1])
    assert first.seed == 1 and first.last == 1 and len(first.wins_first) == 6
    assert first.wins_first == read_run("main", runs["main"][0]).wins_first  # M_0 is the same for every seed
    text = seeds_table([("main", runs["main"]), ("control", runs["control"])])
    rows = [line for line in text.splitlines() if line.startswith("| main |") or line.startswith("| control |")]
    assert len(rows) == 4 and all(re.search(r"\d+/12 = ", row) for row in rows)
    assert all(re.search(r"\| \[(Hit|Stand)\] \d\.\d\d -> \d\.\d\d \|$", row) for row in rows)
    assert "E[value]" in text and re.search(r"- main \(2 seeds\): held-out wins M_last - M_0 [+-]\d", text)
    assert re.search(r"- main - control at M_last \(2 paired seeds\): held-out wins [+-]\d+\.\d \[", text)
    out = tmp_path / "table.md"
    assert main(["seeds", "--setting", "main", *map(str, runs["main"]), "--setting", "control",
                 *map(str, runs["control"]), "--out", str(out)]) == 0
    assert out.read_text() == text and capsys.readouterr().out == text
    ok = seeds_table([("main", runs["main"])], "ok")
    change = meter_difference(first.meter_first, first.meter_last, "ok")
    assert "E[ok]" in ok and "E[value]" not in ok and change.points() in ok


def test_seeds_table_refuses_two_runs_of_one_seed_and_a_run_dir_that_is_not_one(runs, tmp_path):
    with pytest.raises(DataError, match=r"^seeds: setting main has two runs of one seed"):
        seeds_table([("main", [runs["main"][0], runs["main"][0]])])
    with pytest.raises(DataError, match=r"no config\.yaml"):
        seeds_table([("main", [tmp_path])])
    assert main(["seeds", "--setting", "main"]) == 2
    with pytest.raises(DataError, match=r"^seeds: meter metric 'worth': expected one of good, ok, invalid, value$"):
        seeds_table([("main", runs["main"])], "worth")
