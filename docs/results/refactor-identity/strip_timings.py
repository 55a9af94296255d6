"""Write a run's results without wall-clock fields, to compare two runs of the same config.

    python docs/results/refactor-identity/strip_timings.py RUN_DIR OUT.json
    diff before.json after.json        # nothing printed: the same results

It keeps `results.json` (every stage's summary), each round's `evaluate/evaluation.json` and
`evaluate/meter.json`, and the knowledge texts; it drops what measures time or memory rather than
results (keys ending in `seconds`, `_s`, `_per_s`, `_per_min`, `_mib`, `_per_state`) and writes the run
directory's own path as RUN_DIR, so two runs in different directories compare.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TIMING_SUFFIXES = ("seconds", "_s", "_per_s", "_per_min", "_mib", "_per_state")


def is_timing(key: str) -> bool:
    return key.endswith(TIMING_SUFFIXES)


def strip(value: Any, run_dir: str) -> Any:
    """`value` with every timing key removed and the run dir's path replaced, recursively."""
    if isinstance(value, dict):
        return {k: strip(v, run_dir) for k, v in value.items() if not is_timing(str(k))}
    if isinstance(value, list):
        return [strip(v, run_dir) for v in value]
    if isinstance(value, str):
        return value.replace(run_dir, "RUN_DIR")
    return value


def results(run_dir: Path) -> dict[str, Any]:
    where = str(run_dir)
    out: dict[str, Any] = {"results.json": strip(json.loads((run_dir / "results.json").read_text()), where)}
    for name in ("evaluation.json", "meter.json"):
        for path in sorted(run_dir.glob(f"round_*/evaluate/{name}")):
            out[str(path.relative_to(run_dir))] = strip(json.loads(path.read_text()), where)
    for path in sorted(run_dir.glob("round_*/extract/knowledge_*.txt")):
        out[str(path.relative_to(run_dir))] = path.read_text()
    return out


def main() -> None:
    run_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.write_text(json.dumps(results(run_dir), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
