"""A run's results without its timings: what must not change when the code is refactored.

Two runs of the same config on the same machine give the same results (every stage is seeded);
their wall-clock and memory figures differ. `results_fingerprint(run_dir)` keeps `results.json`
(every stage's summary), each round's `evaluate/evaluation.json` and `evaluate/meter.json` and
the knowledge texts, drops every key that measures time or memory, and writes the run dir's own
path as RUN_DIR, so two runs in different directories compare with `diff`:

    oel report RUN_BEFORE --fingerprint before.json
    oel report RUN_AFTER --fingerprint after.json
    diff before.json after.json          # nothing printed: the same results
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from oel.io import atomic_write_text, read_json, read_text
from oel.layout import EVALUATION_FILE, METER_FILE, RunLayout

TIMING_SUFFIXES = ("seconds", "_s", "_per_s", "_per_min", "_mib", "_per_state")
"""Keys ending in these measure time or memory, not results."""
RUN_DIR_PLACEHOLDER = "RUN_DIR"


def without_timings(value: Any, run_dir: str) -> Any:
    """`value` with every timing key removed and the run dir's path replaced, recursively."""
    if isinstance(value, dict):
        return {k: without_timings(v, run_dir) for k, v in value.items() if not str(k).endswith(TIMING_SUFFIXES)}
    if isinstance(value, list):
        return [without_timings(v, run_dir) for v in value]
    if isinstance(value, str):
        return value.replace(run_dir, RUN_DIR_PLACEHOLDER)
    return value


def results_fingerprint(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's results by relative path (timings dropped), in a stable order."""
    layout = RunLayout(run_dir)
    root, where = layout.run_dir, str(layout.run_dir)
    out: dict[str, Any] = {}
    if layout.results_file.is_file():
        out[layout.results_file.name] = without_timings(read_json(layout.results_file, "results file"), where)
    for name in (EVALUATION_FILE, METER_FILE):
        for path in sorted(root.glob(f"round_*/evaluate/{name}")):
            out[path.relative_to(root).as_posix()] = without_timings(read_json(path, "oel result file"), where)
    for path in sorted(root.glob("round_*/extract/knowledge_*.txt")):
        out[path.relative_to(root).as_posix()] = read_text(path, "knowledge file")
    return out


def write_fingerprint(run_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write the fingerprint as sorted, indented JSON (so `diff` shows a changed number on its own line)."""
    path = Path(out)
    atomic_write_text(path, json.dumps(results_fingerprint(run_dir), indent=1, sort_keys=True) + "\n")
    return path
