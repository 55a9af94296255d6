"""The report of an online run (`oel online demo`): rounds over wall time, versions, the gate.

Reads only files the parts wrote: the users' episodes (`users.jsonl`, with the version that
answered each turn), the scheduler's `metrics.jsonl` (one `round` row per round), the
versions (`version.json` each) and the gate's two evaluations per round (the candidate and
the version it would replace, on the same held-out maps and sampling seeds). The users' pass
rate is on training maps and is a deployment number, not an evaluation: the held-out numbers
are the gate's.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oel.evaluate.meter import paired_gap
from oel.evaluate.metrics import percent_points, wilson_interval
from oel.io import atomic_write_text, iter_jsonl, read_json
from oel.layout import EVALUATION_FILE, METER_FILE, METRICS_FILE, DemoLayout
from oel.online.versions import Versions, version_name
from oel.report.gather import meter_result

GATE_EVALUATIONS = ("evaluate_current", "evaluate_candidate")
PERCENT = 100


@dataclass
class OnlineRun:
    layout: DemoLayout
    episodes: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    versions: list[Any] = field(default_factory=list)
    current: int = 0
    evaluations: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """round -> {evaluate_current|evaluate_candidate -> the games metrics}, where the gate played games."""
    meters: dict[int, dict[str, Any]] = field(default_factory=dict)
    """round -> {evaluate_current|evaluate_candidate -> `MeterResult`}, where the gate ran the meter."""


def gather_online(run_dir: str | Path) -> OnlineRun:
    layout = DemoLayout(run_dir)
    run = OnlineRun(layout, episodes=[obj for _, obj in iter_jsonl(layout.users)])
    metrics = layout.scheduler / METRICS_FILE
    if metrics.is_file():
        run.rounds = [obj for _, obj in iter_jsonl(metrics) if obj.get("stage") == "round"]
    versions = Versions(layout.versions)
    run.versions = versions.list()
    run.current = versions.current().version
    for row in run.rounds:
        r = row["round"]
        for which in GATE_EVALUATIONS:
            out = layout.scheduler / f"round_{r}" / which
            if (out / EVALUATION_FILE).is_file():
                games = read_json(out / EVALUATION_FILE, "evaluation").get("games")
                if games:
                    run.evaluations.setdefault(r, {})[which] = games["metrics"]
            if (out / METER_FILE).is_file():
                run.meters.setdefault(r, {})[which] = meter_result(read_json(out / METER_FILE, "meter result"), which)
    return run


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{PERCENT * x:.1f}%"


def _ci(m: dict[str, Any], key: str) -> str:
    low, high = (m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")) if key != "pass_rate" else (m.get("ci_low"),
                                                                                              m.get("ci_high"))
    return f"{_pct(m.get(key))} [{_pct(low)}, {_pct(high)}]"


def episodes_table(run: OnlineRun) -> str:
    """The users' episodes by the version that answered their first turn (training maps)."""
    by_version: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in run.episodes:
        by_version[e["versions"][0]].append(e)
    rows = ["| version | episodes | passed (95% CI) | turns/episode | episodes answered by two versions |",
            "|---|---|---|---|---|"]
    for v, eps in sorted(by_version.items()):
        passed = sum(e["passed"] for e in eps)
        low, high = wilson_interval(passed, len(eps))
        mixed = sum(len(set(e["versions"])) > 1 for e in eps)
        rows.append(f"| {version_name(v)} | {len(eps)} | {passed} ({_pct(passed / len(eps))} [{_pct(low)}, "
                    f"{_pct(high)}]) "
                    f"| {sum(e['turns'] for e in eps) / len(eps):.2f} | {mixed} |")
    return "\n".join(rows)


def rounds_table(run: OnlineRun, t0: float) -> str:
    rows = ["| round | ended (min) | trajectories | extract s | consolidate s | gate s | status | published | "
            "gate verdict |",
            "|---|---|---|---|---|---|---|---|---|"]
    for row in run.rounds:
        verdict = row.get("verdict") or {}
        published = version_name(row["version"]) if row.get("version") is not None else "none"
        rows.append(f"| {row['round']} | {(row['time'] - t0) / 60:.1f} | {row['trajectories']} | "
                    f"{row.get('seconds_extract', '-')} | {row.get('seconds_consolidate', '-')} | "
                    f"{row.get('seconds_gate', '-')} | "
                    f"{row['status']} | {published} | {_verdict(verdict, row)} |")
    return "\n".join(rows)


def _verdict(verdict: dict[str, Any], row: dict[str, Any]) -> str:
    if row.get("error"):
        return f"failed: {row['error']}"
    return verdict.get("reason") or ("gate off" if verdict.get("check") == "off" else "")


def gate_table(run: OnlineRun) -> str:
    """Each round's held-out evaluation of the version it started from and of its candidate."""
    rows = ["| round | model | held-out pass rate (95% CI) | move quality (95% CI over maps) | tokens/turn |",
            "|---|---|---|---|---|"]
    for r, evals in sorted(run.evaluations.items()):
        for which in GATE_EVALUATIONS:
            if which in evals:
                m = evals[which]
                name = "start version" if which == "evaluate_current" else "candidate"
                rows.append(f"| {r} | {name} | {_ci(m, 'pass_rate')} | {_ci(m, 'move_quality')} | "
                            f"{m.get('tokens_per_turn', 0):.2f} |")
    return "\n".join(rows)


def meter_gate_table(run: OnlineRun) -> str:
    """Each round's exact meter on held-out probe states: the start version, the candidate, and
    their paired difference (bootstrap over maps), which is what the gate's verdict rests on."""
    rows = ["| round | start version E[mq] | candidate E[mq] | candidate - start (95% CI over maps) | "
            "candidate state-blind E[mq] | P(invalid) start -> candidate | moves u/d/l/r start -> candidate |",
            "|---|---|---|---|---|---|---|"]
    for r, meters in sorted(run.meters.items()):
        start, cand = meters.get("evaluate_current"), meters.get("evaluate_candidate")
        if start is None or cand is None:
            continue
        g = paired_gap(cand, start)
        moves = " -> ".join("/".join(f"{p:.2f}".lstrip("0") for p in m.move_distribution().values())
                            for m in (start, cand))
        rows.append(f"| {r} | {_pct(start.mean('emq'))} | {_pct(cand.mean('emq'))} | "
                    f"{percent_points(g.diff, g.lo, g.hi)} | "
                    f"{_pct(cand.state_blind_emq())} | {_pct(start.mean('p_invalid'))} -> "
                    f"{_pct(cand.mean('p_invalid'))} | "
                    f"{moves} |")
    return "\n".join(rows)


def plot_timeline(run: OnlineRun, out: Path, t0: float) -> Path | None:
    """Episodes finished over wall time, coloured by the version that served them; rounds as lines."""
    if not run.episodes:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ends = sorted(run.episodes, key=lambda e: e["end"])
    for v in sorted({e["versions"][0] for e in ends}):
        pts = [((e["end"] - t0) / 60, i + 1) for i, e in enumerate(ends) if e["versions"][0] == v]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, label=f"served by {version_name(v)}")
    for row in run.rounds:
        style = "-" if row.get("version") is not None else ":"
        ax.axvline((row["time"] - t0) / 60, color="grey", linestyle=style, linewidth=1)
    ax.set_xlabel("wall time (minutes); lines: rounds ended (dotted: nothing published)")
    ax.set_ylabel("episodes finished")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = out / "online_timeline.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_online_report(run_dir: str | Path) -> Path:
    run = gather_online(run_dir)
    t0 = min((e["start"] for e in run.episodes), default=0.0)
    out = run.layout.report_dir
    out.mkdir(parents=True, exist_ok=True)
    timeline = plot_timeline(run, out, t0)
    published = [v for v in run.versions if v.round is not None]
    md = [f"# Online run report: `{run.layout.run_dir}`", "",
          f"{len(run.episodes)} episodes from simulated users through the gateway, {len(run.rounds)} scheduler "
          f"round(s), {len(published)} version(s) published; the gateway serves {version_name(run.current)} now.", "",
          "## Rounds", "", rounds_table(run, t0), "",
          "## Held-out evaluation per round (the gate)", "",
          "Both models of a round play the same held-out maps with the same sampling seeds. CIs are 95% "
          "(Wilson over episodes for the pass rate, bootstrap over maps for move quality).", "",
          *([gate_table(run), ""] if run.evaluations else []),
          *(["The exact policy meter (no sampling) at every state of one shortest path of each held-out map; "
             "E[mq] = probability on shortest-path moves, state-blind = what the model's average move "
             "distribution alone would score.", "", meter_gate_table(run), ""] if run.meters else []),
          *([] if run.evaluations or run.meters else ["(no gate evaluation in this run)", ""]),
          "## What the users saw", "",
          "Training maps (never the held-out ones); an episode counts for the version that answered its "
          "first turn. A deployment number, not an evaluation: the users' maps differ from round to round.", "",
          episodes_table(run), "",
          "## Versions", ""]
    for v in run.versions:
        reason = (v.verdict or {}).get("reason", "")
        md.append(f"- {version_name(v.version)}: round {v.round if v.round is not None else '-'}, parent "
                  f"{v.parent if v.parent is not None else '-'}{'; ' + reason if reason else ''}")
    if timeline is not None:
        md += ["", f"![timeline]({timeline.name})"]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md) + "\n")
    return path
