"""The precision runs side by side: what each M_1 plays (exact meter) and what its 6 steps cost.

Usage: python docs/results/precision/summary.py [RUN_DIR]
RUN_DIR: runs/precision (the default, what precision.sh wrote) or docs/results/precision (the committed
meter-<run>.json and metrics-<run>.jsonl of the runs on this page).

One row per run (dtype x consolidation seed): E[mq] (state-blind), M_1 - M_0 with its paired CI over
the 12 held-out maps, P(invalid), P(losing), the move distribution, the loss per step, the 6 steps'
time and the peak RSS. Then each lower-precision run against the float32 run of the same seed, paired.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from oel.evaluate.meter import paired_gap
from oel.io import read_json
from oel.report.gather import meter_result

DTYPES = ("float32", "mixed", "bfloat16")
REFERENCE = "float32"


def _runs(root: Path) -> dict[tuple[str, int], Path]:
    """(dtype, seed) -> run dir, for every run whose meter is on file."""
    found = {}
    for meter in sorted(root.glob("meter-*.json")):
        name, _, seed = meter.stem.removeprefix("meter-").partition("-s")
        if name in DTYPES:
            found[(name, int(seed or 0))] = root / meter.stem.removeprefix("meter-")
    return found


def main(root: Path) -> None:
    runs = _runs(root)
    m1, gains = {}, {}
    print("| run | E[mq] (state-blind) | M_1 - M_0 [paired CI] | P(invalid) | P(losing) | moves u/d/l/r "
          "| loss, steps 1..6 | 6 steps | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (dtype, seed), run in sorted(runs.items(), key=lambda kv: (kv[0][1], DTYPES.index(kv[0][0]))):
        saved = read_json(root / f"meter-{run.name}.json", "meter file")
        t, g = saved["teacher"], saved["gaps"]["teacher_minus_student"]
        m1[(dtype, seed)] = meter_result({"per_state": saved["per_state"]["teacher"]}, run.name)  # M_1 is the meter's "teacher"
        gains.setdefault(dtype, []).append(100 * g["diff"])
        metrics = root / f"metrics-{run.name}.jsonl"  # the committed copy, else the run's own
        steps = [json.loads(line) for line in (metrics if metrics.is_file() else run / "metrics.jsonl").read_text().splitlines()]
        losses = " ".join(f"{s['consolidate/loss']:.3f}" for s in steps)
        moves = "/".join(f"{t['moves'][m]:.2f}".lstrip("0") for m in ("[up]", "[down]", "[left]", "[right]"))
        print(f"| {dtype}, seed {seed} | {t['emq']:.3f} ({t['state_blind_emq']:.3f}) | {100 * g['diff']:+.1f} "
              f"[{100 * g['ci95'][0]:+.1f}, {100 * g['ci95'][1]:+.1f}] | {t['p_invalid']:.3f} | {t['p_losing']:.3f} "
              f"| {moves} | {losses} "
              f"| {sum(s['consolidate/step_s'] for s in steps):.0f} s "
              f"| {max(s['consolidate/peak_rss_mib'] for s in steps) / 1024:.1f} GiB |")
    print()
    for dtype, per_seed in sorted(gains.items(), key=lambda kv: DTYPES.index(kv[0])):
        print(f"{dtype}: M_1 - M_0 over {len(per_seed)} seeds {' '.join(f'{g:+.1f}' for g in per_seed)}, "
              f"mean {sum(per_seed) / len(per_seed):+.1f}")
    print()
    for (dtype, seed), result in sorted(m1.items()):
        if dtype != REFERENCE and (REFERENCE, seed) in m1:
            g = paired_gap(result, m1[(REFERENCE, seed)])
            print(f"seed {seed}: {dtype} M_1 - float32 M_1 = {100 * g.diff:+.1f} points "
                  f"[{100 * g.lo:+.1f}, {100 * g.hi:+.1f}] over {g.layouts} maps")


if __name__ == "__main__":
    if len(sys.argv) > 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1] if len(sys.argv) == 2 else "runs/precision"))
