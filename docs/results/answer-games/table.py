"""The screen table from the raw screen files: one row per (game, model, format, setting).

    python docs/results/answer-games/table.py docs/results/answer-games/raw/*.json

Columns: E[ok] as scored and for the state-blind policy (the answer reads the state where the
first is higher; CI over episodes), the state-answer information, E[value], P(invalid), and for a
lessons setting its paired gap over the same model's policy prompt on E[ok] and E[value]. E[value] is
a chance in % except for TowerOfHanoi, where it is minus the turns still needed (its gap column is x100).
"""

from __future__ import annotations

import json
import sys


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


VALUE_IN_TURNS = {"hanoi"}
"""Games whose `value` is not a chance but minus the turns still needed (printed as is, not in %)."""


def value_text(game: str, x: float) -> str:
    return f"{x:.2f} turns" if game in VALUE_IN_TURNS else pct(x)


def ci(g: dict) -> str:
    return f"{100 * g['diff']:+.1f} [{100 * g['ci95'][0]:+.1f}, {100 * g['ci95'][1]:+.1f}]"


print("| game | model | format | lessons placed | setting | probes | E[ok] | state-blind E[ok] | E[ok] - blind (95% CI) | information "
      "(nats) | E[value] | P(invalid) | E[ok] - policy | E[value] - policy | top answers |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    data = json.load(open(path))
    model = data["model"].replace("qwen2.5-coder-", "").replace("-instruct", "")
    placed = "after the game" if "after" in data.get("teacher_template", "") else "before the game"
    for name, s in data["results"].items():
        gap = s.get("gap_vs_policy", {})
        top = ", ".join(f"{a} {q:.2f}" for a, q in s["top_answers"].items())
        print(f"| {data['game']} | {model} | {data.get('format', 'immediate')} | {placed if gap else '-'} | {name} | {s['probes']} | {pct(s['ok'])} | "
              f"{pct(s['ok_state_blind'])} | {ci(s['blind_gap_ok'])} | {s['dependence_nats']:.3f} | {value_text(data['game'], s['value'])} | "
              f"{pct(s['invalid'])} | {ci(gap['ok']) if gap else '-'} | {ci(gap['value']) if gap else '-'} | {top} |")
