"""Does the meter predict how the games open? Its first-state move shares, whole and sharpened
as the games sample (oel.evaluate.sharpen), against the first moves of the 384 sampled games.

Usage: python docs/results/sharpen/first_moves.py
Reads docs/results/xsize/summary: each model's meter file (12 held-out maps, step 0 = the opening
board with no history) and its evaluation.json (first moves of 128 maps x 3 sampling seeds,
T 0.7, top-p 0.8, top-k 20). The maps differ (12 against 128), so this checks shares, not states.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oel.backends.base import SamplingParams
from oel.evaluate.meter import CANONICAL_MOVES, MeterResult
from oel.evaluate.sharpen import sharpen
from oel.io import read_json

S = Path("docs/results/xsize/summary")
MODELS = {  # name: (meter file, evaluation file), each M_3 served in bf16 as it was played
    "M_0": ("meter-M0.json", "evaluation-M0.json"),
    "M_3 (own lessons)": ("meter-M3.json", "evaluation-M3.json"),
    "control M_3": ("meter-control-M3.json", "evaluation-M3-control.json"),
    "raw-trajectory M_3": ("meter-raw-M3.json", "evaluation-M3-raw.json"),
    "hand-written M_3": ("meter-handwritten-M3.json", "evaluation-M3-handwritten.json"),
    "hand-written float32 M_3": ("meter-eval-M3-handwritten-mixed.json", "evaluation-M3-handwritten-mixed.json"),
    "hand-written small-step M_3": ("meter-eval-M3-handwritten-smallstep.json", "evaluation-M3-handwritten-smallstep.json"),
}


def shares(p) -> str:
    return "/".join(f"{x:.2f}" for x in p)


def main() -> None:
    sp = SamplingParams()
    print(f"first move u/d/l/r | whole distribution | sampled (T {sp.temperature}, top-p {sp.top_p}, top-k {sp.top_k}) | games")
    gaps = []
    for name, (meter, evaluation) in MODELS.items():
        m = MeterResult.from_saved(read_json(S / meter, "meter file"), name)
        first = [s.p_move for s in m.states if s.step == 0]
        whole = np.mean(first, axis=0)
        played = np.mean([sharpen(p, sp.temperature, sp.top_p, sp.top_k) for p in first], axis=0)
        counts = read_json(S / evaluation, "evaluation file")["games"]["metrics"]["first_moves"]
        n = sum(counts.values())
        games = [counts.get(k, 0) / n for k in CANONICAL_MOVES]
        tv_whole, tv_played = (0.5 * float(np.abs(np.asarray(games) - q).sum()) for q in (whole, played))
        gaps.append((tv_whole, tv_played))
        print(f"{name}: {shares(whole)} | {shares(played)} | {shares(games)} ({n} games) | "
              f"distance to the games: whole {tv_whole:.2f}, sampled {tv_played:.2f}")
    print("mean total-variation distance to the games' first moves: whole distribution "
          f"{np.mean([g[0] for g in gaps]):.2f}, sampled {np.mean([g[1] for g in gaps]):.2f}")


if __name__ == "__main__":
    main()
