"""Paired differences between two models measured on the same items, each with its 95% interval.

Why paired: two models evaluated on the same held-out games, probe states or IF-Eval prompts
differ far less from item to item than their spreads suggest, so the difference per item (and
an interval over items) resolves changes that two separate intervals would hide. Three kinds:

* held-out wins: B's pass rate minus A's, Newcombe's interval (the games are the same seeds,
  treated as independent: the interval is conservative);
* the exact meter: per map (grid games: E[mq], P(invalid), P(losing)) or per game (small-answer
  games: E[ok], E[value]), a bootstrap over maps or games;
* IF-Eval: every saved answer re-scored with IF-Eval's own checkers, prompt-level strict and
  loose per prompt, a bootstrap over prompts.

`oel pair` prints them for two evaluations; `oel report --compare` for a run and its controls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oel.errors import DataError
from oel.evaluate.answer_meter import AnswerMeterResult, paired_answer_gap
from oel.evaluate.ifeval import PromptVerdict, score_response
from oel.evaluate.ifeval_offline import load_prompts
from oel.evaluate.meter import MeterResult, paired_gap
from oel.evaluate.metrics import bootstrap_mean_ci, newcombe_interval, percent_points
from oel.io import iter_jsonl

GRID_METRICS = ("emq", "p_invalid", "p_losing")
"""What the grid meter's pairs report: the mass on shortest-path moves, on refused moves, on holes."""
ANSWER_METRICS = ("ok", "value")
"""What the small-answer meter's pairs report: the mass on accepted answers, the exact value."""
IFEVAL_LEVELS = ("strict", "loose")
METRIC_NAMES = {"emq": "E[mq]", "p_invalid": "P(invalid)", "p_losing": "P(losing)", "ok": "E[ok]",
                "value": "E[value]"}


@dataclass(frozen=True)
class Difference:
    """B - A on one measure: both values, the difference and its 95% interval, over `n` items."""

    measure: str
    a: float
    b: float
    diff: float
    lo: float
    hi: float
    n: int
    items: str

    def line(self, a_name: str = "A", b_name: str = "B") -> str:
        return (f"{self.measure}: {a_name} {100 * self.a:.1f}% -> {b_name} {100 * self.b:.1f}%, "
                f"{b_name} - {a_name} {self.points()} over {self.n} {self.items}")

    def points(self) -> str:
        """The difference in percent points with its interval: '+8.3 [+4.7, +12.1]'."""
        return percent_points(self.diff, self.lo, self.hi)


def win_difference(a_passed: int, a_episodes: int, b_passed: int, b_episodes: int) -> Difference:
    """B's held-out pass rate minus A's, with Newcombe's interval."""
    if a_episodes < 1 or b_episodes < 1:
        raise DataError(f"held-out wins: no games to compare ({a_episodes} and {b_episodes} episodes)")
    pa, pb = a_passed / a_episodes, b_passed / b_episodes
    lo, hi = newcombe_interval(b_passed, b_episodes, a_passed, a_episodes)
    return Difference("held-out wins", pa, pb, pb - pa, lo, hi, min(a_episodes, b_episodes), "games")


Meter = MeterResult | AnswerMeterResult


def meter_difference(a: Meter, b: Meter, metric: str) -> Difference:
    """B - A on one meter metric, paired over maps (grid) or games (small-answer); a `DataError`
    names the two settings when they were measured on different states."""
    if isinstance(a, MeterResult) and isinstance(b, MeterResult):
        g = paired_gap(b, a, metric)
        return Difference(METRIC_NAMES[metric], a.mean(metric), b.mean(metric), g.diff, g.lo, g.hi, g.layouts,
                          "maps")
    if isinstance(a, AnswerMeterResult) and isinstance(b, AnswerMeterResult):
        d = paired_answer_gap(b, a, metric)
        return Difference(METRIC_NAMES[metric], a.mean(metric), b.mean(metric), d["diff"], *d["ci95"],
                          d["episodes"], "games")
    raise DataError(f"meter: {a.setting} and {b.setting} are meters of different kinds (a grid game's and a "
                    "small-answer game's)")


def meter_differences(a: Meter, b: Meter) -> list[Difference]:
    metrics = GRID_METRICS if isinstance(a, MeterResult) else ANSWER_METRICS
    return [meter_difference(a, b, m) for m in metrics]


def ifeval_verdicts(responses: Path) -> dict[int, PromptVerdict]:
    """Every saved answer of an IF-Eval run (`ifeval_responses.jsonl`), re-scored by prompt key."""
    prompts = {p.key: p for p in load_prompts()}
    verdicts = {}
    for line, row in iter_jsonl(responses):
        if not isinstance(row, dict) or row.get("key") not in prompts or not isinstance(row.get("response"), str):
            raise DataError(f"{responses}:{line}: expected an IF-Eval answer {{\"key\": <prompt key>, "
                            "\"response\": <text>}} as `oel evaluate` writes it")
        verdicts[row["key"]] = score_response(prompts[row["key"]], row["response"])
    return verdicts


def ifeval_differences(a_responses: Path, b_responses: Path) -> list[Difference]:
    """B - A in prompt-level strict and loose accuracy over the prompts both answered (they must be the same)."""
    a, b = ifeval_verdicts(a_responses), ifeval_verdicts(b_responses)
    if a.keys() != b.keys():
        raise DataError(f"{b_responses}: answers other IF-Eval prompts than {a_responses} "
                        f"({len(b)} against {len(a)}); pair runs of the same prompts")
    if not a:
        raise DataError(f"{a_responses}: no IF-Eval answers")
    keys = sorted(a)
    out = []
    for level in IFEVAL_LEVELS:
        fa = np.array([float(all(getattr(a[k], level))) for k in keys])
        fb = np.array([float(all(getattr(b[k], level))) for k in keys])
        lo, hi = bootstrap_mean_ci(list(fb - fa))
        out.append(Difference(f"IF-Eval prompt-level {level}", float(fa.mean()), float(fb.mean()),
                              float((fb - fa).mean()), lo, hi, len(keys), "prompts"))
    return out
