"""`oel report RUN_DIR`: plots and a markdown summary of an OEL run, offline.

Reads only what the loop wrote: each stage's completion marker (its summary numbers), the
consolidation's per-step metrics, the collected trajectories and the knowledge texts.
Writes RUN_DIR/report/: report.md and PNG plots (pass rate per round with 95% CIs, tokens
per turn, move quality, IF-Eval, the KL curve across all consolidation steps, and the
in-context curve vs accumulation step wherever `oel experience curve` was run on a round's
store). `--compare OTHER_RUN ...` adds a table and plots of other runs (controls, ablations) next to it,
and pairs every evaluated model with this run's (`oel.report.controls`). `oel pair A B` pairs two evaluations
(`oel.report.pair`, `oel.report.paired`).
An `oel online demo` run dir gets the online report instead (`oel.report.online`)."""

from oel.report.gather import gather
from oel.report.write import write_report

__all__ = ["gather", "write_report"]
