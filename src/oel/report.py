"""`oel report RUN_DIR`: plots and a markdown summary of an OEL run, offline.

Reads only what the loop wrote: each stage's completion marker (its summary numbers), the
consolidation's per-step metrics, the collected trajectories and the knowledge texts.
Writes RUN_DIR/report/: report.md and PNG plots (pass rate per round with 95% CIs, tokens
per turn, move quality, IF-Eval, the KL curve across all consolidation steps, and the
in-context curve vs accumulation step wherever `oel experience curve` was run on a round's
store). `--compare OTHER_RUN ...` adds a table and plots of other runs (ablations) next to it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oel.errors import DataError
from oel.evaluate.evaluation import GAMES, IN_CONTEXT, summary_part
from oel.io import atomic_write_text, iter_jsonl
from oel.layout import RunLayout



@dataclass
class RunData:
    """Everything the report shows, gathered from a run dir."""

    run_dir: Path
    rounds: list[int]
    evaluate: dict[int, dict[str, Any]] = field(default_factory=dict)
    evaluate_icl: dict[int, dict[str, Any]] = field(default_factory=dict)
    collect: dict[int, dict[str, Any]] = field(default_factory=dict)
    consolidate_steps: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    knowledge: dict[int, str] = field(default_factory=dict)
    curves: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    config: str = ""

    @property
    def name(self) -> str:
        return self.run_dir.name


def gather(run_dir: str | os.PathLike) -> RunData:
    layout = RunLayout(run_dir)
    if not layout.run_dir.is_dir():
        raise DataError(f"{layout.run_dir}: run directory not found")
    rounds = layout.rounds()
    if not rounds:
        raise DataError(f"{layout.run_dir}: no round_<r> directories: is this an `oel loop` run dir?")
    data = RunData(layout.run_dir, rounds)
    data.config = layout.config_file.read_text() if layout.config_file.is_file() else ""
    for r in rounds:
        for stage, target in (("evaluate", data.evaluate), ("collect", data.collect)):
            m = layout.marker(r, stage)
            if m is not None:
                target[r] = m
        icl = {GAMES + k: v for k, v in summary_part(data.evaluate.get(r, {}), IN_CONTEXT).items()}
        if icl:
            data.evaluate_icl[r] = icl
        metrics = layout.consolidate_metrics(r)
        if metrics.is_file():
            data.consolidate_steps[r] = [obj for _, obj in iter_jsonl(metrics)]
        k0 = layout.knowledge_file(r, 0)
        if k0.is_file():
            data.knowledge[r] = k0.read_text(encoding="utf-8").strip()
        curve = layout.curve_file(r)
        if curve.is_file():
            try:
                data.curves[r] = json.loads(curve.read_text())["points"]
            except (json.JSONDecodeError, KeyError) as e:
                raise DataError(f"{curve}: not a curve written by `oel experience curve` ({e})") from None
    return data


def _errorbars(summaries: dict[int, dict[str, Any]], key: str) -> tuple[list[int], list[float], list[list[float]]]:
    xs = sorted(r for r in summaries if key in summaries[r])
    ys = [100 * summaries[r][key] for r in xs]
    lo = [100 * summaries[r].get("game_ci_low", summaries[r][key]) for r in xs]
    hi = [100 * summaries[r].get("game_ci_high", summaries[r][key]) for r in xs]
    return xs, ys, [[max(0.0, y - l) for y, l in zip(ys, lo)], [max(0.0, h - y) for y, h in zip(ys, hi)]]


def _axes(size: tuple[float, float] = (5, 3.5)) -> tuple[Any, Any]:
    """A new figure on the non-interactive backend (reports are written headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pass_rate(data: RunData, out: Path) -> Path:
    fig, ax = _axes()
    for summaries, label, offset in ((data.evaluate, "consolidated (no knowledge)", -0.05),
                                     (data.evaluate_icl, "in context (with knowledge)", 0.05)):
        xs, ys, err = _errorbars(summaries, "game_pass_rate")
        if xs:
            ax.errorbar([x + offset for x in xs], ys, yerr=err, marker="o", capsize=4, label=label)
    _reference_line(ax, data, "game_random_pass_rate", "random play (exact)")
    ax.set_xlabel("round (model M_r)")
    ax.set_ylabel("held-out pass rate (%)")
    ax.set_xticks(data.rounds)
    ax.set_title("Pass rate per round (95% CI)")
    ax.legend(fontsize=8)
    return _save(fig, out / "pass_rate.png")


def _reference_line(ax: Any, data: RunData, key: str, label: str, scale: float = 100.0) -> None:
    """A dashed line at a reference the markers record (random play), if they do."""
    values = [data.evaluate[r][key] for r in data.rounds if data.evaluate.get(r, {}).get(key) is not None]
    if values:
        ax.axhline(scale * sum(values) / len(values), color="grey", linestyle="--", linewidth=1, label=label)


def plot_series(data: RunData, out: Path, key: str, ylabel: str, filename: str, scale: float = 1.0,
                reference: tuple[str, str] | None = None) -> Path | None:
    """One number per round, without and with knowledge; 95% CIs where the marker has `<key>_ci_low/high`;
    `reference`: (marker key, label) of a dashed reference line."""
    xs = [r for r in data.rounds if data.evaluate.get(r, {}).get(key) is not None]
    if not xs:
        return None
    fig, ax = _axes()
    for summaries, label, marker, offset in ((data.evaluate, "no knowledge", "o", -0.05),
                                             (data.evaluate_icl, "with knowledge", "s", 0.05)):
        rounds = [r for r in data.rounds if summaries.get(r, {}).get(key) is not None]
        if not rounds:
            continue
        ys = [scale * summaries[r][key] for r in rounds]
        lo = [scale * (summaries[r].get(f"{key}_ci_low") if summaries[r].get(f"{key}_ci_low") is not None
                       else summaries[r][key]) for r in rounds]
        hi = [scale * (summaries[r].get(f"{key}_ci_high") if summaries[r].get(f"{key}_ci_high") is not None
                       else summaries[r][key]) for r in rounds]
        err = [[max(0.0, y - l) for y, l in zip(ys, lo)], [max(0.0, h - y) for y, h in zip(ys, hi)]]
        ax.errorbar([r + offset for r in rounds], ys, yerr=err, marker=marker, capsize=4, label=label)
    if reference is not None:
        _reference_line(ax, data, reference[0], reference[1], scale)
    ax.legend(fontsize=8)
    ax.set_xlabel("round (model M_r)")
    ax.set_ylabel(ylabel)
    ax.set_xticks(data.rounds)
    return _save(fig, out / filename)


def plot_kl(data: RunData, out: Path) -> Path | None:
    if not data.consolidate_steps:
        return None
    fig, ax = _axes((6, 3.5))
    start = 0
    for r in sorted(data.consolidate_steps):
        rows = data.consolidate_steps[r]
        loss = [row.get("consolidate/loss", row.get("loss")) for row in rows]
        steps = list(range(start + 1, start + len(loss) + 1))
        ax.plot(steps, loss, marker=".", label=f"round {r}")
        start += len(loss)
    ax.set_xlabel("consolidation step (all rounds)")
    ax.set_ylabel("reverse KL (student || teacher)")
    ax.legend(fontsize=8)
    return _save(fig, out / "kl_per_step.png")


def plot_curves(data: RunData, out: Path) -> Path | None:
    """In-context pass rate (95% CI) vs accumulation step, one line per round with a curve."""
    if not data.curves:
        return None
    fig, ax = _axes()
    for r, points in sorted(data.curves.items()):
        xs = [p["step"] for p in points]
        ys = [100 * p["passed"] / p["episodes"] for p in points]
        err = [[y - 100 * p["ci_low"] for y, p in zip(ys, points)], [100 * p["ci_high"] - y for y, p in zip(ys, points)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label=f"round {r}")
    ax.set_xlabel("accumulation step i (knowledge e_i in context)")
    ax.set_ylabel("held-out pass rate (%)")
    ax.set_title("In-context curve (95% CI)")
    ax.legend(fontsize=8)
    return _save(fig, out / "in_context_curve.png")


def plot_compare(runs: list[RunData], out: Path, key: str, ylabel: str, filename: str) -> Path | None:
    """One metric per round for several runs (the main run and its ablations); CIs for pass rates."""
    series = [(data, sorted(r for r in data.evaluate if key in data.evaluate[r])) for data in runs]
    if not any(xs for _, xs in series):
        return None
    fig, ax = _axes((6, 3.5))
    for i, (data, xs) in enumerate(series):
        shifted = [x + 0.06 * (i - (len(runs) - 1) / 2) for x in xs]  # side by side, not on top
        ys = [100 * data.evaluate[r][key] for r in xs]
        if key == "game_pass_rate":
            ax.errorbar(shifted, ys, yerr=_errorbars(data.evaluate, key)[2], marker="o", capsize=4, label=data.name)
        elif xs:
            ax.plot(shifted, ys, marker="o", label=data.name)
    ax.set_xlabel("round (model M_r)")
    ax.set_ylabel(ylabel)
    ax.set_xticks(sorted({r for d in runs for r in d.rounds}))
    ax.legend(fontsize=7)
    return _save(fig, out / filename)


def _fmt_rate(s: dict[str, Any] | None) -> str:
    if not s or "game_pass_rate" not in s:
        return "-"
    lo, hi = s.get("game_ci_low"), s.get("game_ci_high")
    ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and hi is not None else ""
    return f"{100 * s['game_pass_rate']:.1f}%{ci}"


def _fmt(s: dict[str, Any] | None, key: str, scale: float = 1.0, suffix: str = "") -> str:
    return f"{scale * s[key]:.1f}{suffix}" if s and s.get(key) is not None else "-"


def _fmt_mq(s: dict[str, Any] | None) -> str:
    """Move quality with its interval over maps and random play's at the same positions, where recorded."""
    if not s or s.get("game_move_quality") is None:
        return "-"
    text = f"{100 * s['game_move_quality']:.1f}%"
    if s.get("game_move_quality_ci_low") is not None:
        text += f" [{100 * s['game_move_quality_ci_low']:.1f}, {100 * s['game_move_quality_ci_high']:.1f}]"
    if s.get("game_random_move_quality") is not None:
        text += f" (random {100 * s['game_random_move_quality']:.1f}%)"
    return text


def results_table(data: RunData) -> str:
    rows = ["| round | pass rate (95% CI) | in context | move quality | tokens/turn | steps/episode | IF-Eval prompt strict | IF-Eval inst. loose |",
            "|---|---|---|---|---|---|---|---|"]
    for r in data.rounds:
        e, i = data.evaluate.get(r), data.evaluate_icl.get(r)
        rows.append(f"| {r} | {_fmt_rate(e)} | {_fmt_rate(i)} | {_fmt_mq(e)} | "
                    f"{_fmt(e, 'game_tokens_per_turn')} | {_fmt(e, 'game_steps_per_episode')} | "
                    f"{_fmt(e, 'ifeval_prompt_strict', 100, '%')} | {_fmt(e, 'ifeval_instruction_loose', 100, '%')} |")
    return "\n".join(rows)


def compare_table(runs: list[RunData]) -> str:
    rows = ["| run | round | pass rate (95% CI) | in context | move quality | tokens/turn | IF-Eval prompt strict | IF-Eval inst. loose |",
            "|---|---|---|---|---|---|---|---|"]
    for data in runs:
        for r in data.rounds:
            e, i = data.evaluate.get(r), data.evaluate_icl.get(r)
            if e is None:
                continue
            rows.append(f"| {data.name} | {r} | {_fmt_rate(e)} | {_fmt_rate(i)} | {_fmt(e, 'game_move_quality', 100, '%')} | "
                        f"{_fmt(e, 'game_tokens_per_turn')} | {_fmt(e, 'ifeval_prompt_strict', 100, '%')} | "
                        f"{_fmt(e, 'ifeval_instruction_loose', 100, '%')} |")
    return "\n".join(rows)


def render_trajectory(obj: dict[str, Any]) -> str:
    """One episode, whole: the first observation as the model saw it, then every answer and the
    game's full reply (boards included), then the outcome."""
    turns = obj["turns"]
    lines = [f"map seed {obj['seed']}, {obj['model_id']}", "", turns[0]["observation"].strip(), ""]
    for t, turn in enumerate(turns, 1):
        lines += [f"--- turn {t}: the model answered {turn['response'].strip()!r} (move {turn['action'] or 'none'})",
                  turn["feedback"].strip(), ""]
    lines.append(f"outcome: {obj['outcome']}")
    return "\n".join(lines)


def sample_trajectory(run_dir: Path, r: int) -> str:
    """Round r's model on the first held-out map (the same map every round, so rounds compare),
    else its first training episode."""
    layout = RunLayout(run_dir)
    for path in (layout.heldout_trajectories(r), layout.train_trajectories(r)):
        if path.is_file():
            for _, obj in iter_jsonl(path):
                return render_trajectory(obj)
    return ""


def write_report(run_dir: str | os.PathLike, compare: list[str | os.PathLike] | None = None) -> Path:
    """Gather, plot, and write RUN_DIR/report/report.md (+ a comparison with `compare` runs); returns its path."""
    data = gather(run_dir)
    others = [gather(d) for d in compare or []]
    out = RunLayout(data.run_dir).report_dir
    out.mkdir(parents=True, exist_ok=True)
    plots = [plot_pass_rate(data, out),
             plot_series(data, out, "game_tokens_per_turn", "response tokens per turn", "tokens_per_turn.png"),
             plot_series(data, out, "game_move_quality", "moves on a shortest path (%, 95% CI over maps)",
                         "move_quality.png", 100, reference=("game_random_move_quality", "random play, same positions")),
             plot_series(data, out, "ifeval_prompt_strict", "IF-Eval prompt-level strict (%)", "ifeval.png", 100),
             plot_kl(data, out),
             plot_curves(data, out)]
    md = [f"# OEL run report: `{data.run_dir}`", "",
          "Round r's row is model M_r (round 0 = the initial model); 'in context' is M_r with its round's "
          "knowledge in the prompt. Held-out maps only; CIs are 95% Wilson intervals over episodes.", "",
          results_table(data), ""]
    md += [f"![{p.stem}]({p.name})" for p in plots if p is not None]
    if others:
        runs = [data, *others]
        md += ["", "## Comparison with other runs", "",
               "The same table for each run (its own rounds); runs that share a round-0 stage through "
               "`reuse_from` show identical round-0 numbers.", "", compare_table(runs), ""]
        compared = [plot_compare(runs, out, "game_pass_rate", "held-out pass rate (%)", "compare_pass_rate.png"),
                    plot_compare(runs, out, "game_move_quality", "moves on a shortest path (%)", "compare_move_quality.png"),
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


def register(subparsers: Any) -> None:
    import argparse

    p = subparsers.add_parser("report", help="plots and a markdown summary of an `oel loop` run (offline)",
                              description="Write RUN_DIR/report/report.md and PNG plots from what the loop wrote.")
    p.add_argument("run_dir", help="the run directory of an `oel loop` run")
    p.add_argument("--compare", nargs="+", default=[], metavar="OTHER_RUN",
                   help="other run dirs (e.g. ablations) to tabulate and plot next to this one")

    def _run(ns: argparse.Namespace) -> int:
        print(write_report(ns.run_dir, ns.compare))
        return 0

    p.set_defaults(func=_run)
