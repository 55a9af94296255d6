"""Write a run's results without wall-clock fields, to compare two runs of the same config.

    python docs/results/redesign-identity/strip_timings.py RUN_DIR OUT.json
    diff before.json after.json        # nothing printed: the same results

It keeps `results.json` (every stage's summary), each round's `evaluate/evaluation.json` and
the knowledge texts, and drops what measures time or memory rather than results: keys
ending in `seconds`, `_s`, `_per_s`, `_per_min`, `_mib`, and `seconds_per_state`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TIMING_SUFFIXES = ("seconds", "_s", "_per_s", "_per_min", "_mib", "seconds_per_state")


def is_timing(key: str) -> bool:
    return key.endswith(TIMING_SUFFIXES)


def strip(value: Any) -> Any:
    """`value` with every timing key removed, recursively."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if not is_timing(str(k))}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def results(run_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"results.json": strip(json.loads((run_dir / "results.json").read_text()))}
    for path in sorted(run_dir.glob("round_*/evaluate/evaluation.json")):
        out[str(path.relative_to(run_dir))] = strip(json.loads(path.read_text()))
    for path in sorted(run_dir.glob("round_*/extract/knowledge_*.txt")):
        out[str(path.relative_to(run_dir))] = path.read_text()
    return out


def main() -> None:
    run_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.write_text(json.dumps(results(run_dir), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
