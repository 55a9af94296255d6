"""`oel pair A B`: two evaluations of different models on the same items, paired (`oel.report.paired`).

A and B are each an evaluation directory (an `oel evaluate` out_dir, or a loop round's
`round_<r>/evaluate/`) or a meter file (`meter.json`, or what `oel meter out=...` writes). Every
measure both hold is paired: held-out wins (from `evaluation.json`), the exact meter (`meter.json`;
for `oel meter` files, each setting both hold: student, teacher, control), IF-Eval (the answers in
`ifeval/ifeval_responses.jsonl`, re-scored). Typical uses:

    oel pair runs/bj-eval/M0 runs/bj-eval/M3                         # IF-Eval before and after
    oel pair runs/bj-1.5b/round_3/evaluate runs/bj-1.5b-control/round_3/evaluate
    oel pair runs/precision/meter-float32.json runs/precision/meter-mixed.json
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oel.errors import DataError
from oel.evaluate.ifeval import RESPONSES_FILE
from oel.evaluate.meter import MeterResult
from oel.io import read_json
from oel.layout import EVALUATION_FILE, IFEVAL_DIR, METER_FILE
from oel.report.gather import meter_result
from oel.report.paired import Difference, Meter, ifeval_differences, meter_differences, win_difference

EXPECTED = ("an evaluation directory (evaluation.json, meter.json or ifeval/ifeval_responses.jsonl: an "
            "`oel evaluate` out_dir or a loop round's evaluate/) or a meter file (.json)")


@dataclass
class Measured:
    """What one evaluation holds that can be paired."""

    source: Path
    games: tuple[int, int] | None = None
    """(passed, episodes) of the held-out games without knowledge."""
    meters: dict[str, Meter] = field(default_factory=dict)
    """Setting -> meter result: '' for one model's meter, student/teacher/control for `oel meter`'s."""
    ifeval: Path | None = None

    def describe(self) -> str:
        parts = [f"{self.games[1]} held-out games"] if self.games else []
        settings = [s for s in self.meters if s]
        parts += [f"meter settings {', '.join(settings)}" if settings else "the meter"] if self.meters else []
        parts += ["IF-Eval answers"] if self.ifeval else []
        return f"{self.source} ({', '.join(parts)})"


def meters_of(saved: dict[str, Any], path: Path) -> dict[str, Meter]:
    """The meter results in a saved meter file: one (evaluate's meter.json) or one per setting (`oel meter`)."""
    per_state = saved.get("per_state")
    if "per_probe" in saved or isinstance(per_state, list):
        return {"": meter_result(saved, path.name)}
    if isinstance(per_state, dict):
        return {setting: MeterResult.from_saved({"per_state": states}, setting)
                for setting, states in per_state.items()}
    raise DataError(f"{path}: no per-state scores (per_state or per_probe): expected a meter file of `oel evaluate` "
                    "or `oel meter out=...`")


def read_measured(path: str | os.PathLike[str]) -> Measured:
    """Everything pairable at `path`; a one-line `DataError` when there is nothing."""
    p = Path(path)
    if p.is_file():
        return Measured(p, meters=meters_of(read_json(p, "meter file"), p))
    if not p.is_dir():
        raise DataError(f"{p}: not found; expected {EXPECTED}")
    found = Measured(p)
    if (p / EVALUATION_FILE).is_file():
        games = (read_json(p / EVALUATION_FILE, "evaluation file").get("games") or {}).get("metrics")
        if games:
            found.games = (int(games["passed"]), int(games["episodes"]))
    if (p / METER_FILE).is_file():
        found.meters = meters_of(read_json(p / METER_FILE, "meter file"), p / METER_FILE)
    if (p / IFEVAL_DIR / RESPONSES_FILE).is_file():
        found.ifeval = p / IFEVAL_DIR / RESPONSES_FILE
    if found.games is None and not found.meters and found.ifeval is None:
        raise DataError(f"{p}: nothing to pair; expected {EXPECTED}")
    return found


def pair(a: Measured, b: Measured) -> list[tuple[str, Difference]]:
    """Every measure A and B both hold, B - A, labelled by meter setting where there are several."""
    out: list[tuple[str, Difference]] = []
    if a.games and b.games:
        out.append(("", win_difference(*a.games, *b.games)))
    for setting in [s for s in a.meters if s in b.meters]:
        out += [(setting, d) for d in meter_differences(a.meters[setting], b.meters[setting])]
    if a.ifeval and b.ifeval:
        out += [("", d) for d in ifeval_differences(a.ifeval, b.ifeval)]
    if not out:
        raise DataError(f"nothing in common to pair: A is {a.describe()}, B is {b.describe()}")
    return out


def pair_text(a_path: str | os.PathLike[str], b_path: str | os.PathLike[str]) -> str:
    """What `oel pair` prints: the two sources, then one line per paired measure."""
    a, b = read_measured(a_path), read_measured(b_path)
    lines = [f"A: {a.describe()}", f"B: {b.describe()}", ""]
    lines += [f"{setting + ': ' if setting else ''}{d.line()}" for setting, d in pair(a, b)]
    return "\n".join(lines)
