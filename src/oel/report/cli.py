"""`oel report RUN_DIR`: the report of an `oel loop` or `oel online demo` run; `oel pair A B`: two evaluations
of different models on the same items, paired."""

from __future__ import annotations

import argparse
from typing import Any

from oel.errors import ConfigError
from oel.io import atomic_write_text
from oel.layout import DemoLayout
from oel.report.online import write_online_report
from oel.report.fingerprint import write_fingerprint
from oel.report.pair import pair_text
from oel.evaluate.answer_meter import METRICS
from oel.report.seeds import METER_METRIC, seeds_table
from oel.report.write import write_report


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="plots and a markdown summary of an `oel loop` or `oel online "
                                             "demo` run (offline)",
                              description="Write RUN_DIR/report/report.md and PNG plots from what the loop (or the "
                                          "online demo: rounds over wall time, versions, the gate) wrote.")
    p.add_argument("run_dir", help="the run directory of an `oel loop` run or of an `oel online demo` run")
    p.add_argument("--compare", nargs="+", default=[], metavar="OTHER_RUN",
                   help="other run dirs (its controls, ablations) to tabulate, plot and pair with this one")
    p.add_argument("--fingerprint", metavar="OUT_JSON", default=None,
                   help="instead of the report, write the run's results without timings to OUT_JSON (diff two runs "
                        "of one config: a refactor must not change it)")

    def _run(ns: argparse.Namespace) -> int:
        if ns.fingerprint:
            print(write_fingerprint(ns.run_dir, ns.fingerprint))
            return 0
        if DemoLayout(ns.run_dir).is_demo():  # an `oel online demo` run dir
            print(write_online_report(ns.run_dir))
            return 0
        print(write_report(ns.run_dir, ns.compare))
        return 0

    p.set_defaults(func=_run)


    q = subparsers.add_parser("pair", help="two evaluations of different models on the same items: paired "
                                           "differences with 95%% intervals (offline)",
                              description="B - A for every measure both hold: held-out wins (evaluation.json), "
                                          "the exact meter (meter.json or an `oel meter out=` file, per setting), "
                                          "IF-Eval (ifeval/ifeval_responses.jsonl, re-scored).")
    q.add_argument("a", help="an evaluation directory (an `oel evaluate` out_dir, a loop round's evaluate/) or a "
                             "meter file")
    q.add_argument("b", help="the same for the other model (it must hold the same games, states or prompts)")

    def _pair(ns: argparse.Namespace) -> int:
        print(pair_text(ns.a, ns.b))
        return 0

    q.set_defaults(func=_pair)

    s = subparsers.add_parser("seeds", help="settings repeated over loop seeds: each seed's change and differences "
                                            "pooled over seeds (offline)",
                              description="One row per run (M_last - M_0 on held-out wins and the exact meter), "
                                          "then per setting the change pooled over seeds, then the first setting "
                                          "minus each other one, paired by seed (two-level bootstrap: seeds, hands).")
    s.add_argument("--setting", nargs="+", action="append", required=True, metavar="NAME_OR_RUN",
                   help="a setting's name, then its run dirs (one per seed); give it once per setting, the method "
                        "first")
    s.add_argument("--out", default=None, help="also write the table to this markdown file")
    s.add_argument("--meter-metric", default=METER_METRIC, choices=METRICS,
                   help="the exact meter's score to tabulate: value (the answer's exact worth, the default) or the "
                        "share on ok / good / invalid answers")

    def _seeds(ns: argparse.Namespace) -> int:
        settings = []
        for name, *dirs in ns.setting:
            if not dirs:
                raise ConfigError(f"--setting {name}: expected a name, then at least one run dir")
            settings.append((name, dirs))
        text = seeds_table(settings, ns.meter_metric)
        if ns.out:
            atomic_write_text(ns.out, text)
        print(text, end="")
        return 0

    s.set_defaults(func=_seeds)
