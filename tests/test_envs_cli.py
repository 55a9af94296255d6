"""`oel envs` prints the ceiling numbers; bad input is a one-line error."""

from __future__ import annotations

import pytest

from oel.cli import main


def test_oel_envs_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envs", "--game", "frozenlake", "--maps", "8", "--random-episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "solvable within 5 turns : 8/8" in out
    assert "BFS-optimal policy pass rate: 8/8" in out
    assert "exact expectation" in out and "random policy, sampled" in out


def test_oel_envs_rejects_too_many_maps(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envs", "--maps", "1000"]) == 2
    assert "--maps" in capsys.readouterr().err
