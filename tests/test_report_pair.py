"""Paired comparisons: `oel pair A B` and the "Paired with" section of `oel report RUN --compare OTHER`.

The inputs are the files `oel evaluate` and `oel loop` write (evaluation.json, meter.json, the
IF-Eval answers, stage markers), built here with hand-chosen numbers so every expected value is
known; IF-Eval answers are re-scored by IF-Eval's own checkers.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from oel.cli import main
from oel.errors import DataError
from oel.evaluate.ifeval_offline import load_prompts
from oel.evaluate.metrics import bootstrap_mean_ci, newcombe_interval, wilson_ci
from oel.report.controls import verdict
from oel.report.gather import gather
from oel.report.pair import pair_text
from oel.report.write import write_report

HIT_MOVE, OTHER = math.log(0.7), math.log(0.1)
UNIFORM = math.log(0.25)
NO_COMMA_ANSWER = "a sentence that keeps to the rule"
COMMA_ANSWER = "one, two"


def test_newcombe_interval_matches_the_published_blackjack_numbers_and_flips_with_the_order():
    lo, hi = newcombe_interval(44, 384, 11, 384)  # M_3 and M_0 of docs/results/answer-games
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (5.0, 12.4)
    back = newcombe_interval(11, 384, 44, 384)
    assert back == pytest.approx((-hi, -lo))
    lo0, hi0 = newcombe_interval(0, 32, 0, 32)
    assert lo0 < 0 < hi0  # no games won on either side: the interval still has width


def _grid_states(p_first: float) -> list[dict]:
    """Three maps x two states; the first move is the only optimal one and has probability p_first."""
    rest = math.log((1 - p_first) / 3)
    return [{"layout": f"L{i}", "step": s, "logp": [math.log(p_first), rest, rest, rest],
             "optimal": [True, False, False, False], "invalid": [False, True, False, False],
             "losing": [False, False, False, False]} for i in range(3) for s in range(2)]


def _answer_probes(p_hit: float) -> list[dict]:
    """Four games' probes with [Hit]/[Stand]; [Stand] is the ok answer and worth 0.4 against [Hit]'s 0.2."""
    return [{"key": f"g{i}", "seed": i, "turn": 0, "answers": ["[Hit]", "[Stand]"], "good": [False, True],
             "ok": [False, True], "invalid": [False, False], "value": [0.2, 0.4],
             "logp": [math.log(p_hit), math.log(1 - p_hit)]} for i in range(4)]


def _evaluation_dir(d: Path, *, passed: int, episodes: int, meter: dict | None = None,
                    answers: dict[int, str] | None = None) -> Path:
    d.mkdir(parents=True)
    (d / "evaluation.json").write_text(json.dumps({"games": {"metrics": {"passed": passed, "episodes": episodes}}}))
    if meter is not None:
        (d / "meter.json").write_text(json.dumps(meter))
    if answers is not None:
        (d / "ifeval").mkdir()
        rows = [{"key": k, "response": r} for k, r in answers.items()]
        random.Random(len(rows)).shuffle(rows)  # pairing goes by prompt key, not by line order
        (d / "ifeval" / "ifeval_responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _no_comma_keys(n: int) -> list[int]:
    return [p.key for p in load_prompts() if p.instruction_ids == ("punctuation:no_comma",)][:n]


def test_oel_pair_prints_wins_meter_and_ifeval_differences(tmp_path, capsys):
    keys = _no_comma_keys(10)
    a = _evaluation_dir(tmp_path / "M0", passed=11, episodes=384, meter={"per_state": _grid_states(0.25)},
                        answers={k: COMMA_ANSWER for k in keys})
    b = _evaluation_dir(tmp_path / "M3", passed=44, episodes=384, meter={"per_state": _grid_states(0.7)},
                        answers={k: NO_COMMA_ANSWER if i < 4 else COMMA_ANSWER for i, k in enumerate(keys)})
    assert main(["pair", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "held-out wins: A 2.9% -> B 11.5%, B - A +8.6 [+5.0, +12.4] over 384 games" in out
    assert "E[mq]: A 25.0% -> B 70.0%, B - A +45.0 [+45.0, +45.0] over 3 maps" in out
    assert "P(invalid): A 25.0% -> B 10.0%, B - A -15.0 [-15.0, -15.0] over 3 maps" in out
    lo, hi = bootstrap_mean_ci([1.0] * 4 + [0.0] * 6)
    assert (f"IF-Eval prompt-level strict: A 0.0% -> B 40.0%, B - A +40.0 [{100 * lo:+.1f}, {100 * hi:+.1f}] "
            "over 10 prompts") in out


def test_oel_pair_pairs_each_setting_of_oel_meter_files_and_answer_meters(tmp_path):
    meter = {"per_state": {"student": _grid_states(0.25), "teacher": _grid_states(0.4)}}
    other = {"per_state": {"student": _grid_states(0.25), "teacher": _grid_states(0.55)}}
    (tmp_path / "a.json").write_text(json.dumps(meter))
    (tmp_path / "b.json").write_text(json.dumps(other))
    text = pair_text(tmp_path / "a.json", tmp_path / "b.json")
    assert "student: E[mq]: A 25.0% -> B 25.0%, B - A +0.0 [+0.0, +0.0]" in text
    assert "teacher: E[mq]: A 40.0% -> B 55.0%, B - A +15.0 [+15.0, +15.0]" in text
    (tmp_path / "bj0.json").write_text(json.dumps({"per_probe": _answer_probes(0.85)}))
    (tmp_path / "bj3.json").write_text(json.dumps({"per_probe": _answer_probes(0.65)}))
    text = pair_text(tmp_path / "bj0.json", tmp_path / "bj3.json")
    assert "E[ok]: A 15.0% -> B 35.0%, B - A +20.0 [+20.0, +20.0] over 4 games" in text
    assert "E[value]: A 23.0% -> B 27.0%, B - A +4.0 [+4.0, +4.0] over 4 games" in text


def test_oel_pair_refuses_what_cannot_be_paired_in_one_line(tmp_path, capsys):
    keys = _no_comma_keys(4)
    a = _evaluation_dir(tmp_path / "a", passed=1, episodes=8, answers={k: COMMA_ANSWER for k in keys})
    b = _evaluation_dir(tmp_path / "b", passed=1, episodes=8, answers={k: COMMA_ANSWER for k in keys[:3]})
    with pytest.raises(DataError, match=r"ifeval_responses\.jsonl: answers other IF-Eval prompts than .* \(3 against 4\)"):
        pair_text(a, b)
    (tmp_path / "grid.json").write_text(json.dumps({"per_state": _grid_states(0.5)}))
    (tmp_path / "bj.json").write_text(json.dumps({"per_probe": _answer_probes(0.5)}))
    with pytest.raises(DataError, match="nothing in common to pair"):
        pair_text(tmp_path / "grid.json", a)
    with pytest.raises(DataError, match="meters of different kinds"):
        pair_text(tmp_path / "grid.json", tmp_path / "bj.json")
    (tmp_path / "empty").mkdir()
    assert main(["pair", str(tmp_path / "empty"), str(a)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty: nothing to pair; expected an evaluation directory" in err[0]


def _loop_run(run: Path, rounds: dict[int, tuple[int, float]], answers: dict[int, str] | None = None) -> Path:
    """A loop run dir as `oel loop` leaves it for the report: per round its evaluate marker,
    evaluation.json and answer meter; `rounds` maps r -> (games won of 384, P([Hit]))."""
    for r, (won, p_hit) in rounds.items():
        ev = run / f"round_{r}" / "evaluate"
        ev.mkdir(parents=True)
        lo, hi = wilson_ci(won, 384)
        marker = {"game_passed": won, "game_episodes": 384, "game_pass_rate": won / 384, "game_ci_low": lo,
                  "game_ci_high": hi, "game_tokens_per_turn": 4.0}
        (ev / "_complete.json").write_text(json.dumps(marker))
        (ev / "meter.json").write_text(json.dumps({"per_probe": _answer_probes(p_hit)}))
        if answers is not None:
            (ev / "ifeval").mkdir()
            (ev / "ifeval" / "ifeval_responses.jsonl").write_text(
                "".join(json.dumps({"key": k, "response": t}) + "\n" for k, t in answers.items()))
    return run


def test_report_compare_pairs_a_run_with_its_control(tmp_path):
    keys = _no_comma_keys(5)
    main_run = _loop_run(tmp_path / "bj", {0: (11, 0.85), 1: (44, 0.65)}, {k: NO_COMMA_ANSWER for k in keys})
    control = _loop_run(tmp_path / "bj-control", {0: (11, 0.85), 1: (12, 0.75)}, {k: COMMA_ANSWER for k in keys})
    text = write_report(main_run, [control]).read_text()
    section = text[text.index("## Paired with bj"):]
    rows = [line for line in section.splitlines() if line.startswith("| bj")]
    assert [r.split(" | ")[:2] for r in rows] == [["| bj", "M_0"], ["| bj", "M_1"], ["| bj-control", "M_1"]]
    assert "| 27.0% | +4.0 [+4.0, +4.0] | +20.0 [+20.0, +20.0] | [Hit] 0.65 | - |" in rows[1]
    assert rows[2].endswith("| [Hit] 0.75 | +2.0 [+2.0, +2.0] |")  # the run's M_1 minus the control's, E[value]
    assert "- bj: held-out wins M_1 - M_0 +8.6 [+5.0, +12.4]" in section
    assert "- bj - bj-control at M_1: held-out wins +8.3 [+4.7, +12.1]" in section
    assert "IF-Eval prompt-level strict +100.0 [+100.0, +100.0] over 5 prompts" in section


def test_the_report_says_whether_a_gain_is_the_lessons_content(tmp_path):
    main_run = _loop_run(tmp_path / "bj", {0: (11, 0.85), 1: (44, 0.65)})
    beaten = _loop_run(tmp_path / "bj-control", {0: (11, 0.85), 1: (12, 0.75)})
    level = _loop_run(tmp_path / "bj-ontopic", {0: (11, 0.85), 1: (40, 0.70)})
    flat = _loop_run(tmp_path / "bj-flat", {0: (11, 0.85), 1: (14, 0.85)})
    said = verdict(gather(main_run), [gather(beaten)])
    assert said.startswith("**What this shows.** bj: held-out wins M_1 - M_0 +8.6 [+5.0, +12.4] points.")
    assert "Every control falls short of it (this run minus each: bj-control +8.3 [+4.7, +12.1] at M_1)" in said
    # every probe has one answer distribution: whatever moved, it is a prior over answers
    assert "its most likely answer is [Hit], 0.85 -> 0.65; an answer distribution that ignores the state" in said
    assert "its answers do not read the state, so whatever moved is a prior over answers" in said
    both = verdict(gather(main_run), [gather(beaten), gather(level)])
    assert "A control gets as far (this run minus it, interval not above zero: bj-ontopic +1.0 [" in both
    assert "not shown to come from what the lessons say" in both and "Every control" not in both
    assert "No control is beside it" in verdict(gather(main_run), [])
    assert "held-out wins show no gain" in verdict(gather(flat), [gather(beaten)])
    assert "The exact meter, E[value] M_1 - M_0: +4.0 [+4.0, +4.0]; this run minus each control: bj-control +2.0" in said
    assert "Every control falls short" in write_report(main_run, [beaten]).read_text()
    assert "No control is beside it" in write_report(main_run).read_text()
