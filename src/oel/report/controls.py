"""A run next to its controls and ablations (`oel report RUN --compare OTHER ...`), paired.

Every claim a run makes needs the same loop with one thing changed beside it (unrelated lessons,
raw games, off-policy): what the run gains and its control gains too is not the lessons' doing.
This section of the report sets every evaluated model of the run and of each other run side by
side: held-out wins with their intervals, the exact meter paired with M_0 and with the run's own
model of the same round, and the differences that decide: M_last - M_0 in wins for each run, the
run minus each other run at their last common round (wins, and IF-Eval where both answered it).
The other runs usually copy the run's round 0 (`reuse_from`), so their M_0 row is not repeated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from oel.evaluate.answer_meter import AnswerMeterResult
from oel.evaluate.ifeval import RESPONSES_FILE
from oel.evaluate.meter import MeterResult
from oel.evaluate.metrics import percent_points
from oel.layout import IFEVAL_DIR, RunLayout
from oel.report.gather import RunData
from oel.report.paired import (METRIC_NAMES, Difference, Meter, ifeval_differences, meter_difference,
                               win_difference)

NO_VALUE = "-"


def _meter(data: RunData, r: int) -> Meter | None:
    return data.answer_meters.get(r) or data.meters.get(r)


def _headline(meter: Meter) -> tuple[str, str]:
    """The meter's main and second metric for this kind of game."""
    return ("emq", "p_invalid") if isinstance(meter, MeterResult) else ("value", "ok")


def _top(meter: Meter) -> str:
    if isinstance(meter, MeterResult):
        move, share = meter.top_move()
    else:
        move, share = max(meter.average_distribution().items(), key=lambda kv: kv[1])
    return f"{move} {share:.2f}"


def _wins(e: dict) -> str:
    return (f"{e['game_passed']}/{e['game_episodes']} = {100 * e['game_pass_rate']:.1f}% "
            f"[{100 * e['game_ci_low']:.1f}, {100 * e['game_ci_high']:.1f}]")


def _gap(a: Meter | None, b: Meter | None, metric: str) -> str:
    """b - a on `metric`, paired; '-' where either is missing."""
    return meter_difference(a, b, metric).points() if a is not None and b is not None else NO_VALUE


def _rows(main: RunData, data: RunData, base: Meter | None, names: tuple[str, str]) -> list[str]:
    rows = []
    for r in sorted(data.evaluate):
        e = data.evaluate[r]
        if "game_passed" not in e or (data is not main and r == 0 and 0 in main.evaluate):
            continue
        m = _meter(data, r)
        first, second = names
        same_round = _meter(main, r) if data is not main and r else None
        rows.append(f"| {data.name} | M_{r} | {_wins(e)} | {e.get('game_tokens_per_turn', 0.0):.2f} | "
                    f"{f'{100 * m.mean(first):.1f}%' if m else NO_VALUE} | "
                    f"{_gap(base, m, first) if r else NO_VALUE} | {_gap(base, m, second) if r else NO_VALUE} | "
                    f"{_top(m) if m else NO_VALUE} | {_gap(m, same_round, first)} |")
    return rows


def _last_evaluated(data: RunData) -> int | None:
    return max((r for r in data.evaluate if "game_passed" in data.evaluate[r]), default=None)


def _last_common(a: RunData, b: RunData) -> int | None:
    common = [r for r in a.evaluate if r in b.evaluate and "game_passed" in a.evaluate[r]
              and "game_passed" in b.evaluate[r]]
    return max(common) if common else None


def _win_change(e0: dict, e1: dict) -> Difference:
    return win_difference(e0["game_passed"], e0["game_episodes"], e1["game_passed"], e1["game_episodes"])


def _against_controls(main: RunData, others: Sequence[RunData]) -> list[tuple[RunData, int, Difference]]:
    """Main minus each other run in held-out wins, at their last common evaluated round."""
    return [(o, r, _win_change(o.evaluate[r], main.evaluate[r])) for o in others if (r := _last_common(main, o))]


def _ifeval_responses(data: RunData, r: int) -> Path:
    return RunLayout(data.run_dir).stage_dir(r, "evaluate") / IFEVAL_DIR / RESPONSES_FILE


def _decisive_lines(main: RunData, others: Sequence[RunData]) -> list[str]:
    """M_last - M_0 in wins per run; main minus each other run at their last common round."""
    lines = []
    base = main.evaluate.get(0)
    for data in (main, *others):
        last = _last_evaluated(data)
        if base is not None and "game_passed" in base and last:
            change = _win_change(base, data.evaluate[last])
            lines.append(f"- {data.name}: held-out wins M_{last} - M_0 {change.points()}")
    for other, r, change in _against_controls(main, others):
        lines.append(f"- {main.name} - {other.name} at M_{r}: held-out wins {change.points()}")
        a, b = _ifeval_responses(other, r), _ifeval_responses(main, r)
        if a.is_file() and b.is_file():
            lines += [f"  {d.measure} {d.points()} over {d.n} prompts" for d in ifeval_differences(a, b)]
    return lines


def _above(d: Difference) -> bool:
    return d.lo > 0


def _prior_sentence(main: RunData, last: int) -> str:
    """How the answers at the meter's states moved, and whether they read the state (small-answer games)."""
    m0, m1 = main.answer_meters.get(0), main.answer_meters.get(last)
    if not isinstance(m0, AnswerMeterResult) or not isinstance(m1, AnswerMeterResult):
        return ""
    answer, share = max(m1.average_distribution().items(), key=lambda kv: kv[1])
    before = m0.average_distribution().get(answer, 0.0)
    gap = m1.blind_gap("ok")
    points, reads_state = percent_points(gap["diff"], *gap["ci95"]), gap["ci95"][0] > 0
    reads = (f"its answers read the state (E[ok] minus an answer distribution that ignores the state: {points})"
             if reads_state else f"an answer distribution that ignores the state scores as well (E[ok] minus it: "
             f"{points}): its answers do not read the state, so whatever moved is a prior over answers")
    return f" At the meter's states its most likely answer is {answer}, {before:.2f} -> {share:.2f}; {reads}."


def _meter_sentence(main: RunData, others: Sequence[RunData], last: int) -> str:
    """The exact meter's headline, M_last - M_0 and this run minus each control: finer than wins, the
    same verdict rule (an interval above zero)."""
    m0, m1 = _meter(main, 0), _meter(main, last)
    if m0 is None or m1 is None:
        return ""
    metric = _headline(m0)[0]
    name = METRIC_NAMES[metric]
    text = f" The exact meter, {name} M_{last} - M_0: {_gap(m0, m1, metric)}"
    beside = [f"{o.name} {_gap(_meter(o, r), _meter(main, r), metric)} at M_{r}" for o in others
              if (r := _last_common(main, o)) and _meter(o, r) is not None and _meter(main, r) is not None]
    return text + (f"; this run minus each control: {'; '.join(beside)}." if beside else ".")


def verdict(main: RunData, others: Sequence[RunData]) -> str:
    """One paragraph: did the run's last model win more held-out games than M_0, and did every
    control fall short of it? Only then is the gain credited to what the lessons say: a gain the
    same loop also gets reading other text comes from the loop, not from the lessons' content."""
    base, last = main.evaluate.get(0), _last_evaluated(main)
    if base is None or "game_passed" not in base or not last:
        return ""
    change = _win_change(base, main.evaluate[last])
    text = f"**What this shows.** {main.name}: held-out wins M_{last} - M_0 {change.points()} points. "
    if not _above(change):
        text += "The interval is not above zero: held-out wins show no gain."
    elif not others:
        text += ("No control is beside it, so nothing here says the gain comes from what the lessons say "
                 "(`make control`, then `oel report RUN --compare` its controls).")
    else:
        paired = _against_controls(main, others)
        short = [f"{o.name} {d.points()} at M_{r}" for o, r, d in paired if _above(d)]
        level = [f"{o.name} {d.points()} at M_{r}" for o, r, d in paired if not _above(d)]
        if not paired:
            text += "No control has a model evaluated at a round this run evaluated: nothing to set it beside."
        elif level:
            text += (f"A control gets as far (this run minus it, interval not above zero: {'; '.join(level)}): "
                     "the gain is not shown to come from what the lessons say.")
        else:
            text += (f"Every control falls short of it (this run minus each: {'; '.join(short)}): the same loop "
                     "reading other text does not get the gain, so it comes from what the lessons say.")
    text += _meter_sentence(main, others, last) + _prior_sentence(main, last)
    return text + " One run per setting: `oel seeds` says whether it holds over loop seeds."


def control_table(main: RunData, others: Sequence[RunData]) -> str:
    """The markdown section: one row per evaluated model, then the decisive differences (points,
    95% intervals: Newcombe for wins, bootstrap over maps, games or prompts for the rest)."""
    base = _meter(main, 0)
    names = _headline(base) if base is not None else ("emq", "p_invalid")
    first, second = (METRIC_NAMES[n] for n in names)
    out = [f"| run | model | held-out wins (95% CI) | tokens/turn | {first} (exact) | {first} - M_0 | "
           f"{second} - M_0 | top answer | {main.name} - this run, {first} |",
           "|---|---|---|---|---|---|---|---|---|"]
    for data in (main, *others):
        out += _rows(main, data, base, names)
    paragraph = verdict(main, others)
    return "\n".join(out + ["", *_decisive_lines(main, others)] + (["", paragraph] if paragraph else []))
