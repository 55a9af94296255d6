"""The run report: gather a run dir, plot, and write report/report.md (`write_report`)."""

from __future__ import annotations

import os
from pathlib import Path

from oel.io import atomic_write_text
from oel.layout import RunLayout
from oel.report.controls import control_table, verdict
from oel.report.gather import gather
from oel.report.plots import (plot_compare, plot_curves, plot_kl, plot_meter, plot_pass_rate, plot_series,
                              plot_teacher_gap)
from oel.report.tables import (answer_meter_table, collapse_warnings, compare_table, meter_table, results_table,
                               sample_trajectory)

def write_report(run_dir: str | os.PathLike, compare: list[str | os.PathLike] | None = None) -> Path:
    """Gather, plot, and write RUN_DIR/report/report.md (+ a comparison with `compare` runs); returns its path."""
    data = gather(run_dir)
    others = [gather(d) for d in compare or []]
    out = RunLayout(data.run_dir).report_dir
    out.mkdir(parents=True, exist_ok=True)
    plots = [plot_pass_rate(data, out),
             plot_series(data, out, "game_tokens_per_turn", "response tokens per turn", "tokens_per_turn.png"),
             plot_series(data, out, "game_move_quality", "moves on a shortest path (%, 95% CI over maps)",
                         "move_quality.png", 100,
                         reference=("game_random_move_quality", "random play, same positions")),
             plot_series(data, out, "ifeval_prompt_strict", "IF-Eval prompt-level strict (%)", "ifeval.png", 100),
             plot_meter(data, out),
             plot_teacher_gap(data, out),
             plot_kl(data, out),
             plot_curves(data, out)]
    md = [f"# OEL run report: `{data.run_dir}`", "",
          "Round r's row is model M_r (round 0 = the initial model); 'in context' is M_r with its round's "
          "knowledge in the prompt. Held-out maps only; CIs are 95% Wilson intervals over episodes.", "",
          results_table(data), ""]
    if data.meters:
        md += ["The exact policy meter: the probability of each bracketed move, scored (not sampled) at every "
               "state of one shortest path of held-out maps; E[mq] is the mass on shortest-path moves, "
               "'state-blind' what the model's average move distribution alone would score (a move bias).", "",
               meter_table(data), ""]
        md += [line for w in collapse_warnings(data) for line in (w, "")]
    if data.answer_meters:
        md += ["The exact answer meter: the probability of every answer the game accepts, scored (not sampled) at "
               "the states of held-out games as a reference player reaches them. E[ok] is the mass on the answers "
               "the game's oracle accepts (GuessTheNumber: consistent with every hint and any hidden band; "
               "Blackjack: the best answer), E[good] on the best answers, E[value] the exact "
               "chance of winning after the answer (best play afterwards); 'state-blind' is what the model's "
               "average answer distribution alone would score: a model whose E[ok] is no higher answers by prior.",
               "", answer_meter_table(data), ""]
    if not others and (paragraph := verdict(data, [])):
        md += [paragraph, ""]
    for r, gap in sorted(data.gaps.items()):
        md += [f"Round {r} teacher gap (training maps): {gap['verdict']}", ""]
    md += [f"![{p.stem}]({p.name})" for p in plots if p is not None]
    if others:
        runs = [data, *others]
        md += ["", "## Comparison with other runs", "",
               "The same table for each run (its own rounds); runs that share a round-0 stage through "
               "`reuse_from` show identical round-0 numbers.", "", compare_table(runs), "",
               f"## Paired with {data.name}", "",
               "Every evaluated model next to this run's: points with 95% intervals (Newcombe for held-out wins, "
               "a bootstrap over maps, games or prompts for the meter and IF-Eval).", "",
               control_table(data, others), ""]
        compared = [plot_compare(runs, out, "game_pass_rate", "held-out pass rate (%)", "compare_pass_rate.png"),
                    plot_compare(runs, out, "game_move_quality", "moves on a shortest path (%)",
                                 "compare_move_quality.png"),
                    plot_compare(runs, out, "ifeval_instruction_loose", "IF-Eval instruction-level loose (%)",
                                 "compare_ifeval.png")]
        md += [f"![{p.stem}]({p.name})" for p in compared if p is not None]
    for r in data.rounds:
        if r in data.knowledge or sample_trajectory(data.run_dir, r):
            md += ["", f"## Round {r}"]
        if r in data.knowledge:
            md += ["", "Knowledge (run 0, the text the teacher saw):", "", "```", data.knowledge[r], "```"]
        sample = sample_trajectory(data.run_dir, r)
        if sample:
            md += ["", f"M_{r} on the first held-out map (no knowledge), the whole episode:", "", "```", sample, "```"]
    if data.config:
        md += ["", "## Resolved config", "", "```yaml", data.config.rstrip(), "```"]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md) + "\n")
    return path
