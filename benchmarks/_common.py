"""Helpers shared by the benchmark scripts: medians, machine state, child processes, smoke mode.

Not a benchmark itself. Every script prints, next to each figure, the torch thread count
and the load average when it was taken: on a shared 2-core machine a competing process can
slow torch down several-fold, and a ratio is only meaningful if both sides saw the same load.

Every script also takes `--smoke`: the same code on the tiny random model (oel.backends.tiny),
with one or two of everything, in seconds. It measures nothing; tests/test_benchmarks.py runs
each script that way so that none can stop running unnoticed.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_PRESET = "qwen2.5-coder-0.5b-instruct"
SMALL_PRESET = "smollm2-135m-instruct"
RESULT_MARKER = "BENCH_RESULT "
"""A child process prints its result as one line starting with this, after any logging."""


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def machine_state() -> dict[str, Any]:
    """torch threads and the 1-minute load average, to print beside every figure."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "loadavg_1m": round(os.getloadavg()[0], 2)}


def state_note(state: dict[str, Any]) -> str:
    return f"[torch threads {state['torch_threads']}, load avg {state['loadavg_1m']}]"


def emit(result: dict[str, Any]) -> None:
    """Print a child's result where `run_child` will find it."""
    print(RESULT_MARKER + json.dumps(result), flush=True)


def run_child(script: str, args: Sequence[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `python script args...` in a fresh process; return the dict it `emit`ted.

    A fresh process per measurement keeps peak RSS (ru_maxrss) and import costs honest.
    """
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"{script} {' '.join(args)} failed (rc {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len(RESULT_MARKER):])


def ratio(ours: float, baseline: float) -> float:
    return ours / baseline if baseline else float("nan")


SMOKE_HELP = "run in seconds on the tiny random model with one or two of everything (a check that it runs)"
SMOKE_OBSERVATIONS = ("P . H\n. H .\n. . G", "F P H\n. H .\n. . G")
"""FrozenLake-like boards for the smoke trajectories (any text does: the model is random)."""
SMOKE_KNOWLEDGE = "- EXPERIENCE ITEM: Step around H.\n- EXPERIENCE ITEM: G is the goal."


def add_smoke_flag(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


@functools.cache
def smoke_dir() -> Path:
    """A temporary directory for the smoke inputs, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="oel-bench-smoke-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def smoke_model() -> str:
    """The tiny random chat model as a Hugging Face directory (loadable by path, also by children)."""
    from oel.backends.tiny import save_tiny_chat_model

    return save_tiny_chat_model(smoke_dir() / "model")


@functools.cache
def smoke_trajectories() -> str:
    """A trajectory JSONL of policy-template turns: the prefixes of a consolidation benchmark."""
    from oel import prompts
    from oel.trajectory import Message, Trajectory, Turn, write_trajectories

    turns = [Turn(prompt=[Message(role="user", content=prompts.get("policy_grid_v1").render(observation=o))],
                  observation=o, response="[right]") for o in SMOKE_OBSERVATIONS]
    path = smoke_dir() / "trajectories.jsonl"
    write_trajectories(path, [Trajectory(id="smoke", env_id="smoke", seed=0, model_id="tiny", turns=turns,
                                         outcome="failure", passed=False)])
    return str(path)


@functools.cache
def smoke_knowledge() -> str:
    """A knowledge text file for the smoke runs."""
    path = smoke_dir() / "knowledge.txt"
    path.write_text(SMOKE_KNOWLEDGE, encoding="utf-8")
    return str(path)

