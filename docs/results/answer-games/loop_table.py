"""The Blackjack loop next to its control: held-out wins and the exact meter, paired with M_0 and
main with control.

    python docs/results/answer-games/loop_table.py runs/bj-1.5b runs/bj-1.5b-control

Rows: every M_r of each run that was evaluated (M_0 is shared: the second run, a control or an
ablation, reuses the main run's round-0 evaluation).
Wins are 128 held-out games x 3 sampling seeds with a Wilson 95% CI; the meter's CIs are bootstraps
over the 48 held-out probe games, paired on the same states.
"""

from __future__ import annotations

import sys

from oel.evaluate.answer_meter import paired_answer_gap
from oel.evaluate.metrics import wilson_interval
from oel.report.gather import gather

HIT = "[Hit]"


def win_difference(a: dict, b: dict) -> str:
    """a's held-out win rate minus b's with Newcombe's 95% interval (hybrid score: from the two
    Wilson intervals; the games are different models' on the same seeds, treated as independent)."""
    (sa, na), (sb, nb) = (a["game_passed"], a["game_episodes"]), (b["game_passed"], b["game_episodes"])
    pa, pb = sa / na, sb / nb
    (la, ua), (lb, ub) = wilson_interval(sa, na), wilson_interval(sb, nb)
    low = pa - pb - ((pa - la) ** 2 + (ub - pb) ** 2) ** 0.5
    high = pa - pb + ((ua - pa) ** 2 + (pb - lb) ** 2) ** 0.5
    return f"{100 * (pa - pb):+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def ci(g: dict) -> str:
    return f"{100 * g['diff']:+.1f} [{100 * g['ci95'][0]:+.1f}, {100 * g['ci95'][1]:+.1f}]"


main, control = gather(sys.argv[1]), gather(sys.argv[2])
base = main.answer_meters[0]
print("| run | model | held-out wins (95% CI) | tokens/turn | E[value] exact | E[value] - M_0 (95% CI) | "
      "E[best answer] - M_0 | P([Hit]) | state-answer information | vs the second run's M_r: E[value] |")
print("|---|---|---|---|---|---|---|---|---|---|")
for data in (main, control):
    for r in sorted(data.answer_meters):
        if data is control and r == 0:
            continue
        ev, m = data.evaluate[r], data.answer_meters[r]
        wins = (f"{ev['game_passed']}/{ev['game_episodes']} = {100 * ev['game_pass_rate']:.1f}% "
                f"[{100 * ev['game_ci_low']:.1f}, {100 * ev['game_ci_high']:.1f}]")
        vs0 = ci(paired_answer_gap(m, base, "value")) if r else "-"
        ok0 = ci(paired_answer_gap(m, base, "ok")) if r else "-"
        other = control.answer_meters.get(r) if data is main and r else None
        vsc = ci(paired_answer_gap(m, other, "value")) if other is not None else "-"
        print(f"| {data.name} | M_{r} | {wins} | {ev['game_tokens_per_turn']:.2f} | {100 * m.mean('value'):.1f}% | "
              f"{vs0} | {ok0} | {m.average_distribution().get(HIT, 0.0):.2f} | {m.dependence():.3f} | {vsc} |")

last = max(main.evaluate)
print()
print(f"Held-out wins, M_{last} - M_0: main {win_difference(main.evaluate[last], main.evaluate[0])}; "
      f"{control.name} {win_difference(control.evaluate[last], main.evaluate[0])}; "
      f"main - {control.name} {win_difference(main.evaluate[last], control.evaluate[last])} (points, Newcombe 95% CI)")
