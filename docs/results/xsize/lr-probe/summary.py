"""The LR probe's table, from the `oel meter` files lr_probe.sh wrote.

Usage: python docs/results/xsize/lr-probe/summary.py [DIR]   (default: docs/results/xsize/lr-probe)

Each file is one `oel meter` result: "student" is M_0 (the policy prompt, no lessons), "teacher" is
the setting under test (the 1.5B reading the lessons, or a consolidated student with the policy
prompt), "control" the 1.5B reading unrelated lessons where it was measured. Prints, per file and
setting, E[mq] (state-blind), the four answers' shares, P(invalid), P(losing), and the paired
gaps with their bootstrap CIs over maps.
"""

from __future__ import annotations

import sys
from pathlib import Path

from oel.io import read_json

MOVES = ("[up]", "[down]", "[left]", "[right]")
ROLES = ("student", "teacher", "control")


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def row(name: str, role: str, s: dict) -> str:
    moves = "/".join(f"{s['moves'].get(m, 0.0):.2f}" for m in MOVES)
    return (f"| {name} | {role} | {s['layouts']} / {s['states']} | {pct(s['emq'])} ({pct(s['state_blind_emq'])}) "
            f"| {moves} | {pct(s['p_invalid'])} | {pct(s['p_losing'])} |")


def main(folder: Path) -> None:
    print("| file | setting | maps / states | E[mq] % (state-blind) | moves u/d/l/r | P(invalid) % | P(losing) % |")
    print("|---|---|---|---|---|---|---|")
    gaps = []
    for path in sorted(folder.glob("*.json")):
        d = read_json(path, "meter file")
        for role in ROLES:
            if d.get(role):
                print(row(path.stem, role, d[role]))
        for name, g in d["gaps"].items():
            gaps.append(f"{path.stem}: {name} {100 * g['diff']:+.1f} [{100 * g['ci95'][0]:+.1f}, {100 * g['ci95'][1]:+.1f}]")
    print()
    print("\n".join(gaps))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
