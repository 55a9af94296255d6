"""Every script in benchmarks/ still runs: each one's `--smoke` mode (the tiny random model, one or
two of everything) in a fresh process. It measures nothing; it keeps the scripts from rotting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))
SMOKE_TIMEOUT_S = 540
"""Below pytest's own limit, so that a hung script still shows its output. Idle 2-core CPU: 5-30 s each."""
TAIL_LINES = 30


def test_the_benchmarks_folder_is_found() -> None:
    assert "consolidate.py" in SCRIPTS and "collect.py" in SCRIPTS


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_in_smoke_mode(script: str, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--smoke"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-TAIL_LINES:])
    assert proc.returncode == 0, f"{script} --smoke failed (rc {proc.returncode}):\n{tail}"
