"""The report's tables and readable episodes (markdown), from gathered run data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oel.evaluate.answer_meter import paired_answer_gap
from oel.evaluate.meter import CANONICAL_MOVES, paired_gap
from oel.evaluate.metrics import percent_points
from oel.evaluate.sharpen import sharpened
from oel.io import iter_jsonl
from oel.layout import RunLayout
from oel.report.gather import RunData

COLLAPSE_SHARE = 0.9
"""A model putting at least this share of its move probability on one answer, averaged over the
probe states, has collapsed onto it (two FrozenLake students did, at .97 and .87 [down]: docs/results/xsize)."""


def meter_rows(data: RunData) -> list[dict[str, Any]]:
    """Per round: M_r's exact E[mq] (and P(invalid)) at the held-out probe states, paired with M_0."""
    if 0 not in data.meters:
        return []
    base = data.meters[0]
    rows = []
    for r in sorted(data.meters):
        m = data.meters[r]
        row = {"round": r, "emq": m.mean("emq"), "state_blind": m.state_blind_emq(), "p_invalid": m.mean("p_invalid"),
               "p_losing": m.mean("p_losing"), "moves": m.move_distribution()}
        played = sharpened(m, data.sampling)
        row.update(sampled_emq=played.mean("emq"), sampled_top=played.top_move())
        if r != 0 and m.per_layout("emq").keys() == base.per_layout("emq").keys():
            g = paired_gap(m, base)
            row.update(vs0=g.diff, vs0_lo=g.lo, vs0_hi=g.hi)
        rows.append(row)
    return rows


def meter_table(data: RunData) -> str:
    rows = meter_rows(data)
    if not rows:
        return ""
    sp = data.sampling
    out = ["| model | E[mq] (exact) | state-blind E[mq] | P(invalid) | P(losing) | moves u/d/l/r | "
           f"E[mq] - M_0 (95% CI over maps) | as the games sample (T {sp.temperature:g}, top-p {sp.top_p:g}): "
           "E[mq], top move |",
           "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        vs0 = (percent_points(row["vs0"], row["vs0_lo"], row["vs0_hi"]) if "vs0" in row else "-")
        moves = "/".join(f"{p:.2f}".removeprefix("0") for p in row["moves"].values())
        out.append(f"| M_{row['round']} | {100 * row['emq']:.1f}% | {100 * row['state_blind']:.1f}% | "
                   f"{100 * row['p_invalid']:.1f}% | {100 * row['p_losing']:.1f}% | {moves} | {vs0} | "
                   f"{100 * row['sampled_emq']:.1f}%, {row['sampled_top'][0]} {100 * row['sampled_top'][1]:.0f}% |")
    return "\n".join(out)


def answer_meter_table(data: RunData) -> str:
    """Per round: M_r's small-answer meter at the held-out probe states, paired with M_0 (CIs over episodes)."""
    if 0 not in data.answer_meters:
        return ""
    base = data.answer_meters[0]
    out = ["| model | E[ok] (exact) | state-blind E[ok] | E[good] | E[value] | P(invalid) | state-answer information "
           "(nats) | E[ok] - M_0 (95% CI) | E[value] - M_0 (95% CI) | top answers |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r, m in sorted(data.answer_meters.items()):
        gaps = ["-", "-"]
        if r != 0 and m.per_key("ok").keys() == base.per_key("ok").keys():
            gaps = [percent_points(g["diff"], *g["ci95"])
                    for g in (paired_answer_gap(m, base, "ok"), paired_answer_gap(m, base, "value"))]
        top = ", ".join(f"{a} {q:.2f}" for a, q in sorted(m.average_distribution().items(), key=lambda kv: -kv[1])[:3])
        out.append(f"| M_{r} | {100 * m.mean('ok'):.1f}% | {100 * m.mean('ok', blind=True):.1f}% | "
                   f"{100 * m.mean('good'):.1f}% | {100 * m.mean('value'):.1f}% | {100 * m.mean('invalid'):.1f}% | "
                   f"{m.dependence():.3f} | {gaps[0]} | {gaps[1]} | {top} |")
    return "\n".join(out)


def collapse_warnings(data: RunData) -> list[str]:
    """One plain sentence per model that answers (nearly) one move everywhere.

    Why: reverse KL is mode-seeking, so a student sharpens its teacher's favourite move; on these
    boards always [down] alone scores 50% E[mq], so such a model's meter gain is a move bias that
    loses games (it walks off the bottom edge), and the report must say so next to the number.
    """
    out = []
    for r, m in sorted(data.meters.items()):
        move, share = m.top_move()
        played_move, played_share = sharpened(m, data.sampling).top_move()
        always = m.fixed_policy_emq([float(k == move) for k in CANONICAL_MOVES])
        if share >= COLLAPSE_SHARE:
            out.append(f"WARNING: M_{r} puts {100 * share:.0f}% of its move probability on {move} at the probe "
                       f"states: it has collapsed onto one answer (its E[mq] {100 * m.mean('emq'):.1f}%; always "
                       f"{move} scores {100 * always:.1f}% here), and it will lose the games that need another move.")
        elif played_share >= COLLAPSE_SHARE:
            sp = data.sampling
            out.append(f"WARNING: M_{r} puts {100 * share:.0f}% of its move probability on {move}, and sampled as the "
                       f"games sample (T {sp.temperature:g}, top-p {sp.top_p:g}, top-k {sp.top_k}) that becomes "
                       f"{100 * played_share:.0f}% {played_move}: it plays one answer almost everywhere (always {move} "
                       f"scores {100 * always:.1f}% E[mq] here) and will lose the games that need another move.")
    return out


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
    rows = ["| round | pass rate (95% CI) | in context | move quality | tokens/turn | steps/episode | IF-Eval "
            "prompt strict | IF-Eval inst. loose |",
            "|---|---|---|---|---|---|---|---|"]
    for r in data.rounds:
        e, i = data.evaluate.get(r), data.evaluate_icl.get(r)
        if e is None:  # not evaluated (evaluate_every) or not yet
            continue
        rows.append(f"| {r} | {_fmt_rate(e)} | {_fmt_rate(i)} | {_fmt_mq(e)} | "
                    f"{_fmt(e, 'game_tokens_per_turn')} | {_fmt(e, 'game_steps_per_episode')} | "
                    f"{_fmt(e, 'ifeval_prompt_strict', 100, '%')} | {_fmt(e, 'ifeval_instruction_loose', 100, '%')} |")
    return "\n".join(rows)


def compare_table(runs: list[RunData]) -> str:
    rows = ["| run | round | pass rate (95% CI) | in context | move quality | tokens/turn | IF-Eval prompt "
            "strict | IF-Eval inst. loose |",
            "|---|---|---|---|---|---|---|---|"]
    for data in runs:
        for r in data.rounds:
            e, i = data.evaluate.get(r), data.evaluate_icl.get(r)
            if e is None:
                continue
            rows.append(f"| {data.name} | {r} | {_fmt_rate(e)} | {_fmt_rate(i)} | "
                        f"{_fmt(e, 'game_move_quality', 100, '%')} | "
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
            episodes = [obj for _, obj in iter_jsonl(path)]  # in finishing order: pick the lowest map seed
            if episodes:
                return render_trajectory(min(episodes, key=lambda o: (o["seed"], o["sample"])))
    return ""
