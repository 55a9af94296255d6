"""The hidden-band cross table over loop seeds: each deployment's M_3 metered on every deployment's
held-out games, E[metric] change against that deployment's M_0, pooled over seeds.

Measurement only. Usage, from the repo root, after the loops and the cross meters of the results page:

    python docs/results/lesson-content/band_cross.py 0 1 6 --seeds 0 1 2 [--metric ok] [--recipe gb-1.5b]

Where it reads (the page's naming): the main run of deployment D and loop seed S is runs/gb-1.5b-dD for
S = 0 and runs/gb-1.5b-dD-sS otherwise; M_3 of A metered on B is that run's round_3/evaluate when A = B,
else runs/gb-cross/dA-on-dB (S = 0) or runs/gb-cross/dA-sS-on-dB; another recipe's (--recipe
gb-1.5b-grounded) runs are runs/gb-1.5b-grounded-dD[-sS], metered as runs/gb-cross/gb-1.5b-grounded-dA[-sS]-on-dB; M_0 on B is runs/gb-1.5b-dB/round_0/evaluate
(the seeds' runs copy it). A cell pools the per-game differences of every seed that has it: mean and the
two-level bootstrap interval of `oel seeds` (seeds, then the meter's held-out games).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from oel.evaluate.answer_meter import AnswerMeterResult
from oel.evaluate.metrics import percent_points
from oel.io import read_json
from oel.layout import METER_FILE
from oel.report.seeds import hierarchical_diff

RUNS = Path("runs")
MAIN_RECIPE = "gb-1.5b"


def _suffix(seed: int) -> str:
    return "" if seed == 0 else f"-s{seed}"


def _meter_dir(a: int, b: int, seed: int, recipe: str) -> Path:
    run = f"{recipe}-d{a}{_suffix(seed)}"
    if a == b:
        return RUNS / run / "round_3" / "evaluate"
    return RUNS / "gb-cross" / f"{run if recipe != MAIN_RECIPE else run[len(recipe) + 1:]}-on-d{b}"


def _per_game(evaluate_dir: Path, metric: str) -> dict[str, float] | None:
    path = evaluate_dir / METER_FILE
    if not path.is_file():
        return None
    return AnswerMeterResult.from_saved(read_json(path), str(evaluate_dir)).per_key(metric)


def cell(a: int, b: int, seeds: list[int], metric: str, recipe: str = MAIN_RECIPE) -> tuple[str, list[str]]:
    """Pooled change of M_3(A) on B against M_0 on B, and each seed's mean change."""
    base = _per_game(RUNS / f"gb-1.5b-d{b}" / "round_0" / "evaluate", metric)
    if base is None:
        raise SystemExit(f"band_cross: no M_0 meter for deployment {b}")
    games = sorted(base)
    rows, per_seed = [], []
    for s in seeds:
        m3 = _per_game(_meter_dir(a, b, s, recipe), metric)
        if m3 is None or set(m3) != set(games):
            continue
        rows.append([m3[g] - base[g] for g in games])
        per_seed.append(f"s{s} {100 * np.mean(rows[-1]):+.1f}")
    if not rows:
        return "-", []
    return percent_points(*hierarchical_diff(np.array(rows))), per_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deployments", nargs="+", type=int)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--metric", default="ok", choices=["ok", "value", "good"])
    parser.add_argument("--recipe", default=MAIN_RECIPE, help="the runs' name before -dD (M_0 is always gb-1.5b's)")
    args = parser.parse_args()
    ds = args.deployments
    print("| M_3 trained on | " + " | ".join(f"metered on d{b}" for b in ds) + " |")
    print("|---" * (len(ds) + 1) + "|")
    for a in ds:
        cells = []
        for b in ds:
            pooled, per_seed = cell(a, b, args.seeds, args.metric, args.recipe)
            cells.append(f"{pooled} ({', '.join(per_seed)})" if per_seed else pooled)
        print(f"| d{a} | " + " | ".join(cells) + " |")
    print(f"\nE[{args.metric}] M_3 - M_0 on the column's held-out games, percent points; pooled over the seeds "
          "listed in each cell (95% two-level bootstrap: seeds, then games).")


if __name__ == "__main__":
    main()
