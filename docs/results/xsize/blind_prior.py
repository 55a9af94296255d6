"""What a move prior alone wins: the exact pass rate of state-blind play, next to its meter score.

A teacher that does not read the board still has a direction habit, and consolidation copies the
habit. This prints, for fixed move distributions and for the average distribution of any meter file
given (as the meter scores it and as the games sample it, T 0.7 / top-p 0.8 / top-k 20), the exact
chance of winning (`oel.envs.solver.blind_pass_probability`) on 128 maps of round 1's training block
(what a choice may look at) and, as a reference only, on the 128 held-out maps.

Usage: python docs/results/xsize/blind_prior.py [NAME=meter.json ...]
(a meter file of `oel evaluate` (meter.json) or of `oel meter` (its student, teacher and control).)
"""

from __future__ import annotations

import json
import sys

from oel.backends.base import SamplingParams
from oel.envs import EnvConfig
from oel.envs.seeds import heldout_seeds, round_seeds
from oel.envs.solver import MOVES, GridState, blind_pass_probability
from oel.evaluate.games import start_states
from oel.evaluate.meter import MeterResult
from oel.evaluate.sharpen import sharpened

MAPS = 128
PROTOCOL = SamplingParams(temperature=0.7, top_p=0.8, top_k=20)
PRIORS: dict[str, dict[str, float]] = {
    "uniform": {m: 0.25 for m in MOVES},
    **{f"[down] {q:.2f} / [right] {1 - q:.2f}": {"[down]": q, "[right]": 1 - q}
       for q in (1.0, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4)},
}


def pass_rate(maps: list[GridState], prior: dict[str, float]) -> float:
    cfg = EnvConfig()
    return sum(blind_pass_probability(s, prior, cfg.max_turns, cfg.invalid_moves_tolerated) for s in maps) / len(maps)


def meter_settings(name: str, path: str) -> dict[str, MeterResult]:
    saved = json.load(open(path, encoding="utf-8"))
    per_state = saved["per_state"]
    if isinstance(per_state, list):  # oel evaluate's meter.json: one setting
        return {name: MeterResult.from_saved(saved, name)}
    return {f"{name} {k}": MeterResult.from_saved({"per_state": v}, f"{name} {k}") for k, v in per_state.items()}


def main(args: list[str]) -> None:
    train = list(start_states(EnvConfig(), round_seeds(1, "collect", MAPS)).values())
    heldout = list(start_states(EnvConfig(), heldout_seeds(MAPS)).values())
    rows = [(name, prior, None) for name, prior in PRIORS.items()]
    for arg in args:
        name, _, path = arg.partition("=")
        for label, result in meter_settings(name, path).items():
            rows.append((f"{label}, as scored", result.move_distribution(), result.state_blind_emq()))
            sampled = sharpened(result, PROTOCOL)
            rows.append((f"{label}, as sampled", sampled.move_distribution(), sampled.state_blind_emq()))
    print(f"| state-blind policy | moves u/d/l/r | pass, training maps ({MAPS}) | pass, held-out ({MAPS}, reference) "
          "| meter E[mq] of the prior (probe states) |")
    print("|---|---|---|---|---|")
    for name, prior, emq in rows:
        moves = "/".join(f"{prior.get(m, 0.0):.2f}".lstrip("0") for m in MOVES)
        emq_text = "-" if emq is None else f"{emq * 100:.1f}%"
        print(f"| {name} | {moves} | {pass_rate(train, prior) * 100:.1f}% | {pass_rate(heldout, prior) * 100:.1f}% "
              f"| {emq_text} |")


if __name__ == "__main__":
    main(sys.argv[1:])
