"""Two of the meter's files on the same held-out states, paired: B - A per map, with a bootstrap CI.

Usage: python docs/results/xsize/meter_paired.py A/meter.json B/meter.json
(the files `oel evaluate` writes, e.g. summary/meter-M3.json; both must hold the same probe
states). Prints B - A for E[mq], P(invalid) and P(losing), paired over maps (oel.evaluate.meter.paired_gap).
"""

from __future__ import annotations

import sys

from oel.evaluate.meter import paired_gap
from oel.io import read_json
from oel.report.gather import meter_result

METRICS = ("emq", "p_invalid", "p_losing")


def main(a_path: str, b_path: str) -> None:
    a, b = (meter_result(read_json(p, "meter file"), p) for p in (a_path, b_path))
    for metric in METRICS:
        g = paired_gap(b, a, metric)
        print(f"{metric}: B {100 * b.mean(metric):.1f}% - A {100 * a.mean(metric):.1f}% = "
              f"{100 * g.diff:+.1f} points [{100 * g.lo:+.1f}, {100 * g.hi:+.1f}] over {g.layouts} maps")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
