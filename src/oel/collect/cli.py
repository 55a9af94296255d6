"""`oel collect`: the user side of the loop from the shell (`oel import-logs` is logs_cli.py).

    oel collect model.name=qwen2.5-coder-0.5b-instruct seeds=heldout num_seeds=32 out=runs/c/traj.jsonl
    oel collect backend=openai endpoint.base_url=http://127.0.0.1:8000/v1 out=runs/c/traj.jsonl
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from oel.collect.play import CollectCommandConfig, collect_command, summary_path
from oel.commands import add_config_command
from oel.config import save_config
from oel.io import check_writable_file, read_text_file
from oel.models import check_model_name

_CHATTY_LOGGERS = ("httpx", "httpx2", "openai")


def run_collect(config: CollectCommandConfig, ns: argparse.Namespace) -> int:
    """Collect with a live progress bar: episodes done, pass rate so far, generation tokens/s."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    check_writable_file(config.out, "trajectory file")
    if config.knowledge_file:  # inputs before anything is written
        read_text_file(config.knowledge_file, "knowledge file", allow_empty=True)
    if config.backend != "openai":
        check_model_name(config.model.name)
    for name in _CHATTY_LOGGERS:  # one INFO line per HTTP request would bury the progress bar
        logging.getLogger(name).setLevel(logging.WARNING)
    out_cfg = summary_path(config.out).with_name(summary_path(config.out).name.replace(".summary.json", ".config.yaml"))
    save_config(config, out_cfg)
    columns = (TextColumn("collect"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("collect", total=None, status="loading model...")

        def on_start(pending: int, total: int) -> None:
            progress.update(task, total=pending, status=f"({total - pending} of {total} already on file)")

        def on_finish(_traj: Any, st: Any) -> None:
            progress.update(task, advance=1, status=f"pass {st.passed}/{st.episodes} ({st.pass_rate:.1%}) | "
                                                    f"{st.generation_tokens_per_s:.1f} gen tok/s | "
                                                    f"{st.tokens_per_turn:.1f} tok/turn")

        stats = collect_command(config, on_start=on_start, on_finish=on_finish)
    print(f"collected {stats.episodes} episodes ({stats.skipped} already on file) -> {config.out}")
    print(f"pass rate {stats.pass_rate:.3f} ({stats.passed}/{stats.episodes}), {stats.turns} turns, "
          f"{stats.tokens_per_turn:.2f} response tokens/turn, {stats.generation_tokens_per_s:.1f} generation tok/s, "
          f"{stats.episodes_per_min:.1f} episodes/min, wall {stats.wall_seconds:.1f}s")
    print(f"summary: {summary_path(config.out)}; config: {out_cfg}")
    return 0


def register(subparsers: Any) -> None:
    add_config_command(
        subparsers, "collect", CollectCommandConfig, run_collect,
        help="play episodes with a model or endpoint and append their trajectories to JSONL (resumable)",
        description="Play episodes (all in flight advance together, one batched model call per turn), "
                    "append each trajectory to `out` as it finishes, and skip episodes already there on rerun.",
    )
