"""Helpers shared by the benchmark scripts: medians, machine state, child processes.

Not a benchmark itself. Every script prints, next to each figure, the torch thread count
and the load average when it was taken: on a shared 2-core machine a competing process can
slow torch down several-fold, and a ratio is only meaningful if both sides saw the same load.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
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
