"""`oel report RUN_DIR`: the report of an `oel loop` or `oel online demo` run, from the shell."""

from __future__ import annotations

import argparse
from typing import Any

from oel.layout import DemoLayout
from oel.report.online import write_online_report
from oel.report.write import write_report


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="plots and a markdown summary of an `oel loop` or `oel online "
                                             "demo` run (offline)",
                              description="Write RUN_DIR/report/report.md and PNG plots from what the loop (or the "
                                          "online demo: rounds over wall time, versions, the gate) wrote.")
    p.add_argument("run_dir", help="the run directory of an `oel loop` run or of an `oel online demo` run")
    p.add_argument("--compare", nargs="+", default=[], metavar="OTHER_RUN",
                   help="other run dirs (e.g. ablations) to tabulate and plot next to this one")

    def _run(ns: argparse.Namespace) -> int:
        if DemoLayout(ns.run_dir).is_demo():  # an `oel online demo` run dir
            print(write_online_report(ns.run_dir))
            return 0
        print(write_report(ns.run_dir, ns.compare))
        return 0

    p.set_defaults(func=_run)
