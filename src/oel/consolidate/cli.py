"""`oel consolidate`: one round of on-policy context distillation from the command line.

    oel consolidate trajectories=runs/r0/trajectories.jsonl knowledge=[runs/r0/k0.txt,runs/r0/k1.txt] \\
        output_dir=runs/r0/consolidate model.name=qwen2.5-coder-0.5b-instruct steps=10

or put the keys in a YAML file: `oel consolidate configs/consolidate.yaml steps=20`. The
consolidated model lands in `<output_dir>/model` (a plain Hugging Face directory). Running
the same command again resumes from the last checkpoint (`on_existing=resume`).

On several GPUs (docs/scale-out.md): `torchrun --nproc_per_node=8 -m oel.cli consolidate
configs/gpu/consolidate-8gpu-fsdp.yaml ...`; only rank 0 draws the progress bar.
"""

from __future__ import annotations

import argparse
from typing import Any

from oel.commands import add_config_command
from oel.consolidate.config import ConsolidateCommandConfig
from oel.consolidate.distributed import is_main_process
from oel.consolidate.trainer import command_trainer

DESCRIPTION = (
    "Consolidate a round's knowledge into the weights: the student answers the round's prefixes "
    "without knowledge, the frozen round-start model scores the same answers with the knowledge "
    "in its prompt, and the student is trained toward it (token-level reverse KL). "
    "sampler=off_policy runs the off-policy baseline instead."
)


def _progress_columns() -> list[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return [
        TextColumn("[bold]consolidate"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  top-k mass {task.fields[mass]}  {task.fields[tps]} tok/s"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    ]


def run(config: ConsolidateCommandConfig, ns: argparse.Namespace) -> int:
    from rich.progress import Progress

    trainer = command_trainer(config)
    try:
        trainer.prepare_output()
        if not is_main_process():  # other ranks of a torchrun launch: train quietly
            trainer.run()
            return 0
        with Progress(*_progress_columns(), transient=False) as progress:
            task = progress.add_task("consolidate", total=config.steps, completed=trainer.step,
                                     loss="-", mass="-", tps="-")

            def on_step(step: int, metrics: dict[str, float]) -> None:
                progress.update(task, completed=step, loss=f"{metrics['loss']:.4f}",
                                mass=f"{metrics['student_topk_mass']:.3f}", tps=f"{metrics['tokens_per_s']:.1f}")

            result = trainer.run(on_step)
    finally:
        trainer.close()
    print(f"consolidated model: {result.model_dir}")
    return 0


def register(subparsers: Any) -> None:
    add_config_command(subparsers, "consolidate", ConsolidateCommandConfig, run,
                       help="train the round's knowledge into the weights (on-policy context distillation)",
                       description=DESCRIPTION)
