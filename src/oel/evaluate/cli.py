"""`oel evaluate`: one model on the held-out maps (with and without knowledge) and on IF-Eval.

    oel evaluate model.name=qwen2.5-coder-0.5b-instruct games.num_maps=32 games.sampling_seeds=[0] \
        ifeval.num_prompts=20 out_dir=runs/eval
    oel evaluate configs/eval.yaml knowledge_file=runs/x/knowledge.txt

Prints a table and writes `evaluation.json` (plus trajectories and IF-Eval answers) into
`out_dir`. Rerunning the same command returns the saved results; an interrupted run resumes.
"""

from __future__ import annotations

import argparse
from typing import Any

from oel.cli import add_config_command


def run_evaluate(config: Any, ns: argparse.Namespace) -> int:
    """Load the model once, run every enabled part, print the table."""

    from oel.config import save_config
    from oel.evaluate.evaluation import evaluate, evaluation_table
    from oel.layout import EVALUATION_FILE
    from oel.collect.backends.hf import HFBackend
    from oel.evaluate.evaluation import read_knowledge_file
    from oel.io import check_writable_dir
    from oel.models import check_model_name

    # Inputs and the output folder first: a bad path fails before the model loads.
    out = check_writable_dir(config.out_dir, "evaluation out_dir")
    knowledge = read_knowledge_file(config.knowledge_file) if config.knowledge_file else None
    check_model_name(config.model.name)
    save_config(config, out / "evaluate.config.yaml")
    backend = HFBackend.from_model_config(config.model, max_batch_size=config.max_batch_size)
    result = evaluate(backend, config, knowledge=knowledge)
    print(evaluation_table(result))
    print(f"\nwritten: {out / EVALUATION_FILE}")
    return 0


def run_meter(config: Any, ns: argparse.Namespace) -> int:
    from oel.evaluate.gap import gap_table, run_gap
    from oel.io import check_writable_file

    if config.out:
        check_writable_file(config.out, "meter result")
    gap = run_gap(config)
    print(gap_table(gap))
    if "sample_check" in gap.meta:
        from oel.evaluate.meter_check import summary_line

        print("\n" + summary_line(gap.meta["sample_check"]))
    if config.out:
        print(f"\nwritten: {config.out}")
    return 0


def register(subparsers: Any) -> None:
    from oel.evaluate.config import EvaluateConfig
    from oel.evaluate.gap import GapConfig

    add_config_command(
        subparsers, "meter", GapConfig, run_meter,
        help="the exact policy meter: student vs teacher (lessons) vs control (unrelated lessons) on probe states",
        description="Score the four bracketed moves exactly (no sampling) at every state of one shortest path per "
                    "map, for the student (policy prompt), the teacher reading knowledge_file, and the same teacher "
                    "reading unrelated lessons; print E[move quality], P(invalid), P(losing) and the paired gaps with "
                    "bootstrap CIs over maps. A diagnostic: never a training signal.",
    )

    add_config_command(
        subparsers, "evaluate", EvaluateConfig, run_evaluate,
        help="held-out pass rate (CI, move quality, tokens/turn) with/without knowledge, and IF-Eval offline",
        description="Play the first games.num_maps held-out maps once per sampling seed (without knowledge, and "
                    "with it when knowledge_file is set), answer an IF-Eval subset greedily, print a table and "
                    "write evaluation.json into out_dir. Idempotent and resumable.",
    )
