"""The report's plots (matplotlib, headless): every per-round number with its 95% CI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oel.evaluate.meter import reference_emq
from oel.report.gather import RunData
from oel.report.tables import meter_rows


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


def plot_meter(data: RunData, out: Path) -> Path | None:
    """E[mq] per round, exact, with the paired 95% CI of its difference to M_0 drawn around it."""
    rows = meter_rows(data)
    if not rows:
        return None
    fig, ax = _axes()
    xs = [row["round"] for row in rows]
    ys = [100 * row["emq"] for row in rows]
    err = [[100 * (row["vs0"] - row["vs0_lo"]) if "vs0" in row else 0.0 for row in rows],
           [100 * (row["vs0_hi"] - row["vs0"]) if "vs0" in row else 0.0 for row in rows]]
    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label="M_r (error bars: paired 95% CI vs M_0)")
    ax.plot(xs, [100 * row["state_blind"] for row in rows], linestyle=":", marker=".", label="state-blind (bias only)")
    refs = reference_emq(data.meters[0].states)  # meter_rows is empty without M_0's meter
    ax.axhline(100 * refs["uniform"], color="grey", linestyle="--", linewidth=1, label="uniform random")
    ax.set_xlabel("round (model M_r)")
    ax.set_ylabel("E[move quality] at held-out probe states (%)")
    ax.set_xticks(data.rounds)
    ax.set_title("Exact policy meter per round")
    ax.legend(fontsize=7)
    return _save(fig, out / "meter.png")


def plot_teacher_gap(data: RunData, out: Path) -> Path | None:
    """Per round, on its training maps: teacher - student and teacher - control, with 95% CIs."""
    if not data.gaps:
        return None
    fig, ax = _axes()
    for name, label, offset in (("teacher_minus_student", "teacher - student", -0.05),
                                ("teacher_minus_control", "teacher - unrelated-lessons control", 0.05)):
        rounds = [r for r in sorted(data.gaps) if name in data.gaps[r]["gaps"]]
        if not rounds:
            continue
        g = [data.gaps[r]["gaps"][name] for r in rounds]
        ys = [100 * x["diff"] for x in g]
        err = [[100 * (x["diff"] - x["ci95"][0]) for x in g], [100 * (x["ci95"][1] - x["diff"]) for x in g]]
        ax.errorbar([r + offset for r in rounds], ys, yerr=err, marker="o", capsize=4, label=label)
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xlabel("round")
    ax.set_ylabel("E[mq] gap (points)")
    ax.set_xticks(sorted(data.gaps))
    ax.set_title("Teacher gap before each consolidation (95% CI)")
    ax.legend(fontsize=7)
    return _save(fig, out / "teacher_gap.png")


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
        err = [[y - 100 * p["ci_low"] for y, p in zip(ys, points)],
               [100 * p["ci_high"] - y for y, p in zip(ys, points)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label=f"round {r}")
    ax.set_xlabel("accumulation step i (knowledge e_i in context)")
    ax.set_ylabel("held-out pass rate (%)")
    ax.set_title("In-context curve (95% CI)")
    ax.legend(fontsize=8)
    return _save(fig, out / "in_context_curve.png")


def plot_compare(runs: list[RunData], out: Path, key: str, ylabel: str, filename: str) -> Path | None:
    """One metric per round for several runs (the main run and its ablations); CIs for pass rates."""
    series = [(data, sorted(r for r in data.evaluate if data.evaluate[r].get(key) is not None)) for data in runs]
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
