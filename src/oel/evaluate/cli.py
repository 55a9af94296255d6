"""`oel evaluate`, `oel meter`, `oel experience curve`: the evaluation stage's commands.

`oel evaluate` plays one model on the held-out maps (with and without knowledge) and answers IF-Eval:

    oel evaluate model.name=qwen2.5-coder-0.5b-instruct games.num_maps=32 games.sampling_seeds=[0] \
        ifeval.num_prompts=20 out_dir=runs/eval
    oel evaluate configs/eval.yaml knowledge_file=runs/x/knowledge.txt

Prints a table and writes `evaluation.json` (plus trajectories and IF-Eval answers) into
`out_dir`. Rerunning the same command returns the saved results; an interrupted run resumes.
"""

from __future__ import annotations

import argparse
from typing import Any

from oel.backends.hf import HFBackend
from oel.backends.select import from_config
from oel.commands import EXPERIENCE_GROUP, add_config_command, command_group, progress_bar
from oel.config import save_config
from oel.envs import is_grid_game
from oel.evaluate.answer_gap import answer_gap_table, run_answer_gap
from oel.evaluate.config import EvaluateCommandConfig
from oel.evaluate.curve import CurveConfig, CurvePoint, curve_table, evaluate_curve
from oel.evaluate.evaluation import evaluate, evaluation_table
from oel.evaluate.gap import GapConfig, gap_table, run_gap
from oel.evaluate.meter_check import summary_line
from oel.extract import read_manifest
from oel.io import check_writable_dir, check_writable_file
from oel.knowledge import Knowledge
from oel.layout import EVALUATION_FILE
from oel.models import check_model_name


def run_evaluate(config: EvaluateCommandConfig, ns: argparse.Namespace) -> int:
    """Load the model once, run every enabled part, print the table."""
    # Inputs and the output folder first: a bad path fails before the model loads.
    out = check_writable_dir(config.out_dir, "evaluation out_dir")
    knowledge = Knowledge.read([config.knowledge_file]) if config.knowledge_file else None
    check_model_name(config.model.name)
    save_config(config, out / "evaluate.config.yaml")
    backend = HFBackend.from_model_config(config.model, max_batch_size=config.max_batch_size)
    result = evaluate(backend, config.settings(), env=config.env, out_dir=config.out_dir, knowledge=knowledge)
    print(evaluation_table(result))
    print(f"\nwritten: {out / EVALUATION_FILE}")
    return 0


def run_meter(config: GapConfig, ns: argparse.Namespace) -> int:
    if config.out:
        check_writable_file(config.out, "meter result")
    if not is_grid_game(config.env):
        print(answer_gap_table(run_answer_gap(config)))
        if config.out:
            print(f"\nwritten: {config.out}")
        return 0
    gap = run_gap(config)
    print(gap_table(gap))
    if "sample_check" in gap.meta:
        print("\n" + summary_line(gap.meta["sample_check"]))
    if config.out:
        print(f"\nwritten: {config.out}")
    return 0


def run_curve(config: CurveConfig, ns: argparse.Namespace) -> int:
    # The store and where the curve goes, before the policy model loads.
    check_writable_dir(config.resolved_out_dir(), "curve out_dir")
    read_manifest(config.store, config.round)
    if config.policy.backend != "openai":
        check_model_name(config.policy.model.name, "policy.model.name")
    backend = from_config(config.policy)
    tok = getattr(backend, "tokenizer", None)
    count = (lambda t: len(tok.encode(t, add_special_tokens=False))) if tok is not None else None
    with progress_bar() as bar:
        task = bar.add_task("in-context curve", total=len(config.steps) or None)

        def on_point(p: CurvePoint) -> None:
            bar.advance(task)
            bar.console.print(f"step {p.step}: {p.passed}/{p.episodes} ({p.pass_rate:.1%}, CI "
                              f"{p.ci_low:.1%}-{p.ci_high:.1%})")

        points = evaluate_curve(config, backend, count_tokens=count, on_point=on_point)
    print(curve_table(points))
    print(f"written: {config.resolved_out_dir()}/curve.(md|csv|json|png)")
    return 0


def register(subparsers: Any) -> None:
    add_config_command(
        subparsers, "meter", GapConfig, run_meter,
        help="the exact policy meter: student vs teacher (lessons) vs control (unrelated lessons) on probe states",
        description="Score the four bracketed moves exactly (no sampling) at every state of one shortest path per "
                    "map, for the student (policy prompt), the teacher reading knowledge_file, and the same teacher "
                    "reading unrelated lessons; print E[move quality], P(invalid), P(losing) and the paired gaps with "
                    "bootstrap CIs over maps. For a small-answer game (env.game=blackjack, ...): every answer at the "
                    "states of games its reference player played (or visited=), E[ok], E[value], the state-answer "
                    "information and the paired gaps over games. A diagnostic: never a training signal.",
    )

    add_config_command(
        subparsers, "evaluate", EvaluateCommandConfig, run_evaluate,
        help="held-out pass rate (CI, move quality, tokens/turn) with/without knowledge, and IF-Eval offline",
        description="Play the first games.num_maps held-out maps once per sampling seed (without knowledge, and "
                    "with it when knowledge_file is set), answer an IF-Eval subset greedily, print a table and "
                    "write evaluation.json into out_dir. Idempotent and resumable.",
    )
    add_config_command(command_group(subparsers, *EXPERIENCE_GROUP), "curve", CurveConfig, run_curve,
                       help="held-out pass rate with e_i in context for chosen steps i: table (md/csv) and plot")
