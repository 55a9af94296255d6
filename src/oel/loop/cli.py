"""`oel loop CONFIG [key=value ...]`: run (or resume) an OEL run, with live progress."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from oel.commands import add_config_command
from oel.progress import set_display
from oel.loop.config import LoopConfig
from oel.loop.run import run_loop

log = logging.getLogger(__name__)

STATUS_REFRESH_S = 0.25
"""The status line follows the running task at most this often."""


class LoopProgress:
    """Turns the loop's events into one rich status line per stage and a log line per result."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.status: Any = None
        self.done = 0
        self.passed = 0
        self.round = 0
        self._shown = 0.0

    # -- oel.progress.Display: the innermost task of the running stage, on the status line --------
    def opened(self, task: Any) -> None:
        self.updated(task)

    def updated(self, task: Any) -> None:
        now = time.monotonic()
        if self.status is not None and now - self._shown >= STATUS_REFRESH_S:
            self._shown = now
            self.status.update(f"round {self.round}: {task.line()}")

    def closed(self, task: Any) -> None:
        return None

    def __call__(self, kind: str, event: dict[str, Any]) -> None:
        r, stage = event["round"], event.get("stage", "")
        self.round = r
        if kind == "start":
            self.done = self.passed = 0
            self.status = self.console.status(f"round {r}: {stage} ...")
            self.status.start()
        elif kind == "skip":
            self.console.print(f"round {r}: {stage} already complete, skipped")
        elif kind == "reuse":
            self.console.print(f"round {r}: {stage} reused from {event['source']}")
        elif kind == "episode" and self.status is not None:
            self.done += 1
            self.passed += bool(event["passed"])
            self.status.update(f"round {r}: {stage}: {self.done} episodes, pass rate {self.passed / self.done:.1%}")
        elif kind == "extract_step" and self.status is not None:
            self.status.update(f"round {r}: {stage}: run {event['run']} step {event['step']}")
        elif kind == "train_step" and self.status is not None:
            self.status.update(f"round {r}: {stage}: step {event['step']}/{event['total']} "
                               f"loss {event['loss']:.4f} top-k mass {event['student_topk_mass']:.3f} "
                               f"{event.get('tokens_per_s', 0):.0f} tok/s")
        elif kind == "done":
            if self.status is not None:
                self.status.stop()
            shown = {k: v for k, v in event["summary"].items()
                     if isinstance(v, float) and ("pass" in k or "loss" in k or "ifeval" in k)}
            nums = ", ".join(f"{k} {v:.3f}" for k, v in list(shown.items())[:6])
            detail = f" ({nums})" if nums else ""
            self.console.print(f"round {r}: {stage} done in {event['summary']['seconds']:.0f}s{detail}")


def _run(config: LoopConfig, ns: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    progress = LoopProgress(console)
    if console.is_terminal:  # else oel.progress logs a line every LOG_EVERY_S
        set_display(progress)
    try:
        run_loop(config, on_event=progress)
    finally:
        set_display(None)
        if progress.status is not None:
            progress.status.stop()
    console.print(f"run complete: {config.run_dir} (report: oel report {config.run_dir})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    add_config_command(
        subparsers, "loop", LoopConfig, _run,
        help="run OEL rounds: collect -> extract -> consolidate, evaluating every round's model (resumable)",
        description=("Run (or resume) an OEL run. Each stage writes RUN_DIR/round_<r>/<stage>/ and a completion "
                     "marker last; rerunning the same command continues at the first incomplete stage."),
    )
