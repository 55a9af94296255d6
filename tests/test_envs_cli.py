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


def test_oel_envs_prior_prints_the_exact_pass_rate_of_a_move_habit(capsys: pytest.CaptureFixture[str]) -> None:
    """An even [down]/[right] split wins 19.3% of the 128 training maps (docs/results/xsize); always
    [down] never wins a 3x3 lake (it ends on the bottom edge or in a hole)."""
    assert main(["envs", "--game", "frozenlake", "--prior", "[down]=0.5,[right]=0.5", "--prior", "[down]=1"]) == 0
    out = capsys.readouterr().out
    assert "state-blind prior [down]=0.5,[right]=0.5: 19.2% of the held-out maps, 19.3% of 128 training maps" in out
    assert "state-blind prior [down]=1: 0.0% of the held-out maps, 0.0% of 128 training maps" in out


@pytest.mark.parametrize("spec", ["[down]=2", "[north]=0.5", "[down]=0.7,[right]=0.7", "[down]"])
def test_oel_envs_prior_rejects_what_is_not_a_move_distribution(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envs", "--game", "frozenlake", "--maps", "2", "--prior", spec]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--prior" in err[0]
