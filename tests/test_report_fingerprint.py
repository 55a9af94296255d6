"""`oel report RUN --fingerprint OUT`: a run's results without timings, so two runs of one config diff clean."""

from __future__ import annotations

import json
from pathlib import Path

from oel.cli import main


def _run(root: Path, *, seconds: float, rss: float, passed: int) -> Path:
    """A run dir as the loop leaves it: results.json, a round's evaluation and meter, a knowledge text."""
    (root / "round_0" / "evaluate").mkdir(parents=True)
    (root / "round_0" / "extract").mkdir(parents=True)
    (root / "results.json").write_text(json.dumps({"0": {"collect": {"episodes": 16, "seconds": seconds,
                                                                     "out": str(root / "round_0" / "collect")},
                                                         "consolidate": {"loss": 0.02635, "peak_rss_mib": rss,
                                                                         "step_s": seconds / 6}}}))
    (root / "round_0" / "evaluate" / "evaluation.json").write_text(json.dumps(
        {"games": {"metrics": {"passed": passed, "episodes": 32}, "wall_seconds": seconds}}))
    (root / "round_0" / "evaluate" / "meter.json").write_text(json.dumps({"summary": {"emq": 0.243, "seconds_per_state": 1.5}}))
    (root / "round_0" / "extract" / "knowledge_0.txt").write_text("- EXPERIENCE ITEM: avoid H\n")
    return root


def test_two_runs_that_differ_only_in_time_memory_and_place_have_the_same_fingerprint(tmp_path):
    a = _run(tmp_path / "before", seconds=30.0, rss=5000.0, passed=3)
    b = _run(tmp_path / "after", seconds=41.5, rss=5600.0, passed=3)
    c = _run(tmp_path / "changed", seconds=30.0, rss=5000.0, passed=4)
    for run in (a, b, c):
        assert main(["report", str(run), "--fingerprint", str(tmp_path / f"{run.name}.json")]) == 0
    before, after = (tmp_path / "before.json").read_text(), (tmp_path / "after.json").read_text()
    assert before == after
    saved = json.loads(before)
    assert saved["results.json"]["0"]["collect"] == {"episodes": 16, "out": "RUN_DIR/round_0/collect"}
    assert saved["results.json"]["0"]["consolidate"] == {"loss": 0.02635}
    assert saved["round_0/extract/knowledge_0.txt"] == "- EXPERIENCE ITEM: avoid H\n"
    assert (tmp_path / "changed.json").read_text() != before
    assert not (a / "report").exists()  # the fingerprint alone: no report written
