"""Settings repeated over loop seeds (`oel seeds`): each seed's change, and differences pooled over seeds.

One run of a loop is one draw: its training maps, its sampled lessons and its training steps are
random, and on Blackjack one setting has moved from 15.6% to 0.0% between runs. So a claim is made
over seeds: every setting (the method, each control) is run with seeds 0..S-1 (`oel loop seed=s`),
all on the same held-out hands, and this table shows

* per run: held-out wins of M_0 and of its last model, M_last - M_0 (Newcombe's interval), and (the
  small-answer games) the exact meter's E[value] change (or another of its scores, `--meter-metric`), paired
  over the meter's games;
* per setting, pooled: M_last - M_0, and the first setting minus each other one at M_last, each with
  a two-level bootstrap interval: seeds resampled, then held-out hands resampled (the same hands
  for both sides, since every run plays the same ones). It widens with the spread between seeds as
  well as with the hands; with three seeds it is a rough interval, and the per-seed rows are there
  to be read.

Runs of two settings are paired by their seed (a control of seed s copies the method's round 0 of
seed s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from oel.errors import DataError
from oel.evaluate.answer_meter import METRICS, AnswerMeterResult
from oel.evaluate.metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, percent_points
from oel.io import read_json, read_text
from oel.layout import RunLayout
from oel.report.gather import meter_result
from oel.report.paired import meter_difference, win_difference
from oel.trajectory import read_trajectories

METER_METRIC = "value"
"""The meter's default headline for the small-answer games: the exact expected value of the model's answer
(`ok`, the share on answers consistent with everything true, is the other one a table may ask for)."""
CI_LEVEL = 0.95


@dataclass(frozen=True)
class SeedRun:
    """One run of one setting: held-out win rate per hand (over its sampling seeds) of M_0 and M_last."""

    setting: str
    seed: int
    run_dir: Path
    last: int
    wins_first: dict[int, float]
    wins_last: dict[int, float]
    episodes: tuple[int, int, int, int]
    """(M_0 passed, M_0 episodes, M_last passed, M_last episodes)."""
    meter_first: AnswerMeterResult | None
    meter_last: AnswerMeterResult | None


def _per_hand(path: Path) -> tuple[dict[int, float], int, int]:
    if not path.is_file():
        raise DataError(f"{path}: not found; expected the held-out games of an evaluated model")
    by_hand: dict[int, list[float]] = {}
    for t in read_trajectories(str(path)):
        by_hand.setdefault(t.seed, []).append(float(t.passed))
    passed = int(sum(sum(v) for v in by_hand.values()))
    episodes = sum(len(v) for v in by_hand.values())
    return {h: float(np.mean(v)) for h, v in by_hand.items()}, passed, episodes


def read_run(setting: str, run_dir: str | Path) -> SeedRun:
    """A finished loop run: its seed (config.yaml), M_0's and its last evaluated model's held-out games."""
    layout = RunLayout(run_dir)
    if not layout.config_file.is_file():
        raise DataError(f"{layout.run_dir}: no config.yaml; expected the run dir of an `oel loop` run")
    saved = yaml.safe_load(read_text(layout.config_file, "run config")) or {}
    seed = saved.get("seed", 0)
    if not isinstance(seed, int):
        raise DataError(f"{layout.config_file}: seed: expected an integer, got {seed!r}")
    evaluated = [r for r in layout.rounds() if "game_passed" in (layout.marker(r, "evaluate") or {})]
    if 0 not in evaluated or len(evaluated) < 2:
        raise DataError(f"{layout.run_dir}: needs M_0 and a later model evaluated (found rounds {evaluated}); "
                        "is the run finished?")
    last = evaluated[-1]
    first, p0, n0 = _per_hand(layout.heldout_trajectories(0))
    final, p1, n1 = _per_hand(layout.heldout_trajectories(last))
    if first.keys() != final.keys():
        raise DataError(f"{layout.run_dir}: M_0 and M_{last} played different held-out maps")
    return SeedRun(setting, seed, layout.run_dir, last, first, final, (p0, n0, p1, n1),
                   _answer_meter(layout, 0), _answer_meter(layout, last))


def _answer_meter(layout: RunLayout, round_index: int) -> AnswerMeterResult | None:
    """Round r's exact meter where it is the small-answer games' (the only meter this table reads)."""
    path = layout.meter_file(round_index)
    if not path.is_file():
        return None
    saved = read_json(path, "meter result")
    return meter_result(saved, f"M_{round_index}") if "per_probe" in saved else None


def hierarchical_diff(diffs: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                      level: float = CI_LEVEL) -> tuple[float, float, float]:
    """Mean of a [seeds x hands] array of paired differences and its two-level percentile bootstrap
    interval: each resample draws seeds with replacement, then hands with replacement (one draw of
    hands per resample, shared by its seeds: every seed played the same hands)."""
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 2 or 0 in d.shape:
        raise ValueError(f"hierarchical_diff: expected a non-empty seeds x hands array, got shape {d.shape}")
    rng = np.random.default_rng(seed)
    s_idx = rng.integers(0, d.shape[0], size=(resamples, d.shape[0]))
    h_idx = rng.integers(0, d.shape[1], size=(resamples, d.shape[1]))
    stats = np.array([d[np.ix_(s, h)].mean() for s, h in zip(s_idx, h_idx)])
    alpha = (1 - level) / 2
    return float(d.mean()), float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _matrix(rows: Sequence[dict[int, float]], hands: list[int]) -> np.ndarray:
    return np.array([[r[h] for h in hands] for r in rows])


def _hands(runs: Sequence[SeedRun]) -> list[int]:
    hands = sorted(runs[0].wins_first)
    for r in runs:
        if sorted(r.wins_first) != hands:
            raise DataError(f"{r.run_dir}: played other held-out maps than {runs[0].run_dir}; "
                            "pool runs of the same evaluation")
    return hands


def _meter_change(run: SeedRun, metric: str) -> str:
    if not isinstance(run.meter_first, AnswerMeterResult) or not isinstance(run.meter_last, AnswerMeterResult):
        return "-"
    d = meter_difference(run.meter_first, run.meter_last, metric)
    return f"{100 * d.a:.1f}% -> {100 * d.b:.1f}%, {d.points()}"


def _top_answer(run: SeedRun) -> str:
    """The answer M_last gives most at the meter's states, with its share at M_0 and at M_last
    (how far a prior moved: Blackjack's P([Hit]))."""
    if not isinstance(run.meter_first, AnswerMeterResult) or not isinstance(run.meter_last, AnswerMeterResult):
        return "-"
    first, last = run.meter_first.average_distribution(), run.meter_last.average_distribution()
    answer = max(last, key=lambda a: last[a])
    return f"{answer} {first.get(answer, 0.0):.2f} -> {last[answer]:.2f}"


def _meter_matrix(runs: Sequence[SeedRun], metric: str, *, first: bool) -> tuple[np.ndarray, list[str]] | None:
    meters = [r.meter_first if first else r.meter_last for r in runs]
    if not all(isinstance(m, AnswerMeterResult) for m in meters):
        return None
    keyed = [m.per_key(metric) for m in meters]  # type: ignore[union-attr]
    keys = sorted(keyed[0])
    if any(sorted(k) != keys for k in keyed):
        return None
    return np.array([[k[g] for g in keys] for k in keyed]), keys


def seeds_table(settings: Sequence[tuple[str, Sequence[str | Path]]], metric: str = METER_METRIC) -> str:
    """The markdown: one row per run, then per setting the pooled M_last - M_0, then the first
    setting minus each other one at M_last (paired by seed), held-out wins and the meter's E[metric]."""
    if not settings:
        raise DataError("seeds: no settings given")
    if metric not in METRICS:
        raise DataError(f"seeds: meter metric {metric!r}: expected one of {', '.join(METRICS)}")
    runs = {name: sorted((read_run(name, d) for d in dirs), key=lambda r: r.seed) for name, dirs in settings}
    for name, rs in runs.items():
        seeds = [r.seed for r in rs]
        if len(set(seeds)) != len(seeds):
            raise DataError(f"seeds: setting {name} has two runs of one seed ({seeds})")
    every = [r for rs in runs.values() for r in rs]
    hands = _hands(every)
    out = ["| setting | seed | M_0 held-out wins | M_last held-out wins | M_last - M_0 | "
           f"meter E[{metric}] M_0 -> M_last, change | top answer M_0 -> M_last |", "|---|---|---|---|---|---|---|"]
    for rs in runs.values():
        for r in rs:
            p0, n0, p1, n1 = r.episodes
            d = win_difference(p0, n0, p1, n1)
            out.append(f"| {r.setting} | {r.seed} | {p0}/{n0} = {100 * p0 / n0:.1f}% | "
                       f"{p1}/{n1} = {100 * p1 / n1:.1f}% (M_{r.last}) | {d.points()} | {_meter_change(r, metric)} | "
                       f"{_top_answer(r)} |")
    out += ["", f"Pooled over seeds and held-out maps ({len(hands)} maps, e.g. Blackjack hands; 95% two-level "
                "bootstrap, seeds then maps):", ""]
    for name, rs in runs.items():
        change = _matrix([r.wins_last for r in rs], hands) - _matrix([r.wins_first for r in rs], hands)
        line = (f"- {name} ({_count(len(rs), 'seed')}): held-out wins M_last - M_0 "
                f"{percent_points(*hierarchical_diff(change))}")
        m0, m1 = _meter_matrix(rs, metric, first=True), _meter_matrix(rs, metric, first=False)
        if m0 is not None and m1 is not None and m0[1] == m1[1]:
            line += f"; meter E[{metric}] M_last - M_0 {percent_points(*hierarchical_diff(m1[0] - m0[0]))}"
        out.append(line)
    (main, main_runs), *others = runs.items()
    for name, rs in others:
        by_seed = {r.seed: r for r in rs}
        paired = [(m, by_seed[m.seed]) for m in main_runs if m.seed in by_seed]
        if not paired:
            out.append(f"- {main} - {name}: no seed in common")
            continue
        a = _matrix([m.wins_last for m, _ in paired], hands) - _matrix([c.wins_last for _, c in paired], hands)
        line = (f"- {main} - {name} at M_last ({_count(len(paired), 'paired seed')}): held-out wins "
                f"{percent_points(*hierarchical_diff(a))}")
        ma = _meter_matrix([m for m, _ in paired], metric, first=False)
        mb = _meter_matrix([c for _, c in paired], metric, first=False)
        if ma is not None and mb is not None and ma[1] == mb[1]:
            line += f"; meter E[{metric}] {percent_points(*hierarchical_diff(ma[0] - mb[0]))}"
        out.append(line)
    return "\n".join(out) + "\n"
