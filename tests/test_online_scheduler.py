"""The online scheduler on a tiny random model: a round publishes, a failing round does not, the gate,
rollback, kill -9 mid-consolidation + restart, and the `oel online` commands."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from oel import prompts
from oel.backends.tiny import save_tiny_chat_model
from oel.config import load_config
from oel.errors import ConfigError
from oel.online.config import OnlineConfig
from oel.online.scheduler import Scheduler
from oel.online.store import Store
from oel.online.versions import Versions
from oel.trajectory import Message, Trajectory, Turn, read_trajectories

OBSERVATIONS = ["Turn 1\nP . .\n. H .\n. . G", "Turn 2\n. P .\n. H .\n. . G"]
KILL_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model", seed=5)


def _trajectory(i: int) -> Trajectory:
    turns = [Turn(prompt=[Message(role="user", content=prompts.get("policy_grid_v1").render(observation=o))],
                  observation=o, response="[right]") for o in OBSERVATIONS]
    return Trajectory(id=f"t{i}", env_id="tiny", seed=i, model_id="tiny", turns=turns, outcome="failure", passed=False)


def _fill(store_path: Path, n: int, start: int = 0) -> None:
    with Store.open(store_path) as store:
        for i in range(start, start + n):
            store.add_trajectory("client", _trajectory(i), idempotency_key=f"k{i}")


def overrides(tiny: str, root: Path, *extra: str) -> list[str]:
    """One small round: raw-trajectory extraction (no generation), 2 consolidation steps."""
    return [f"store={root / 'store.sqlite'}", f"run_dir={root / 'run'}", f"versions.dir={root / 'versions'}",
            f"model.name={tiny}", "model.dtype=float32", "model.device=cpu", "min_trajectories=2", "poll_s=0.01",
            "max_rounds=1", "extract.kind=raw_trajectories", "extract.num_runs=1", "extract.budget_tokens=3000",
            "consolidate.steps=2", "consolidate.batch_size=2", "consolidate.micro_batch_size=1",
            "consolidate.max_new_tokens=3", "consolidate.top_k=16", "consolidate.save_every=1", *extra]


def _config(tiny: str, root: Path, *extra: str) -> OnlineConfig:
    return load_config(OnlineConfig, None, overrides(tiny, root, *extra))


def _weights(model_dir: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def _rows(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]


def test_not_enough_trajectories_runs_nothing(tiny_model, tmp_path, one_thread):
    _fill(tmp_path / "store.sqlite", 1)
    scheduler = Scheduler(_config(tiny_model, tmp_path))
    assert scheduler.run_round() is None
    assert Versions(tmp_path / "versions").current().version == 0


def test_a_round_publishes_v1_and_current_moves_to_it(tiny_model, tmp_path, one_thread):
    _fill(tmp_path / "store.sqlite", 3)
    scheduler = Scheduler(_config(tiny_model, tmp_path))
    outcome = scheduler.run_round()
    assert outcome is not None and (outcome.status, outcome.version, outcome.trajectories) == ("published", 1, 3)
    current = json.loads((tmp_path / "versions" / "current.json").read_text())
    assert current["version"] == 1 and Path(current["model_dir"]).is_absolute()
    new, base = _weights(current["model_dir"]), _weights(tiny_model)
    assert any(not torch.equal(new[k], base[k]) for k in base if k in new)
    assert (tmp_path / "versions" / "v0001" / "_complete.json").is_file()
    assert len(read_trajectories(tmp_path / "run" / "round_0" / "trajectories.jsonl")) == 3
    assert scheduler.store.stats()["rounds_done"] == 1
    row = _rows(tmp_path)[-1]
    assert row["stage"] == "round" and row["status"] == "published" and row["version"] == 1
    assert row["seconds_consolidate"] > 0 and row["trajectories"] == 3
    saved = json.loads((tmp_path / "versions" / "v0001" / "version.json").read_text())
    assert saved["round"] == 0 and saved["parent"] == 0 and "consolidate_loss" in saved["metrics"]
    # the next round starts from v1
    _fill(tmp_path / "store.sqlite", 2, start=3)
    assert scheduler.run_round().version == 2
    assert json.loads((tmp_path / "versions" / "v0002" / "version.json").read_text())["parent"] == 1
    scheduler.close()


def test_a_rounds_lessons_and_versions_are_their_owners_only(tiny_model, tmp_path, one_thread):
    """Lessons and models are drawn from users' conversations, like the store: 0600 files, 0700 folders."""
    _fill(tmp_path / "store.sqlite", 2)
    old = os.umask(0o022)
    try:
        scheduler = Scheduler(_config(tiny_model, tmp_path))
        assert scheduler.run_round().status == "published"
        scheduler.close()
    finally:
        os.umask(old)
    extract_dir = tmp_path / "run" / "round_0" / "extract"
    lessons = sorted(extract_dir.glob("knowledge_*.txt"))
    steps = sorted(extract_dir.rglob("step_*.json"))
    assert lessons and steps
    for path in [*lessons, *steps, tmp_path / "versions" / "current.json", tmp_path / "versions" / "v0001" / "version.json"]:
        assert path.stat().st_mode & 0o777 == 0o600, path
    for folder in (tmp_path / "versions", tmp_path / "versions" / "v0001", tmp_path / "versions" / "v0001" / "model",
                   steps[0].parent):
        assert folder.stat().st_mode & 0o777 == 0o700, folder


def test_a_non_finite_loss_publishes_nothing_and_fails_the_round(tiny_model, tmp_path, one_thread, monkeypatch):
    from oel.consolidate import trainer

    real = trainer.LOSSES["topk_reverse_kl"]
    monkeypatch.setitem(trainer.LOSSES, "topk_reverse_kl", lambda *a: (real(*a)[0] * float("nan"), real(*a)[1]))
    _fill(tmp_path / "store.sqlite", 2)
    scheduler = Scheduler(_config(tiny_model, tmp_path))
    outcome = scheduler.run_round()
    assert outcome.status == "failed" and "non-finite loss" in outcome.error and outcome.version is None
    assert Versions(tmp_path / "versions").current().version == 0
    assert [v.version for v in Versions(tmp_path / "versions").list()] == [0]
    stats = scheduler.store.stats()
    assert stats["rounds_failed"] == 1 and stats["trajectories_unconsumed"] == 2  # back in the pool
    assert "non-finite loss" in _rows(tmp_path)[-1]["error"]


def test_a_gate_that_cannot_be_met_keeps_current(tiny_model, tmp_path, one_thread):
    _fill(tmp_path / "store.sqlite", 2)
    scheduler = Scheduler(_config(tiny_model, tmp_path, "gate.check=meter", "gate.tolerance=-2",
                                  "evaluate.meter.max_layouts=1"))
    outcome = scheduler.run_round()
    assert outcome.status == "refused" and outcome.version is None
    assert outcome.verdict["passed"] is False and outcome.verdict["metric"] == "meter_emq"
    assert Versions(tmp_path / "versions").current().version == 0
    assert scheduler.store.stats()["rounds_done"] == 1
    assert _rows(tmp_path)[-1]["verdict"]["passed"] is False


def test_a_collapsed_candidate_is_refused_whatever_the_check(tiny_model, tmp_path, one_thread):
    """gate.max_move_share runs the meter even with check=off; the candidate's top-move share is the
    one the candidate's meter.json holds, and the threshold decides."""
    _fill(tmp_path / "store.sqlite", 4)
    scheduler = Scheduler(_config(tiny_model, tmp_path, "gate.max_move_share=0.25", "evaluate.meter.max_layouts=1"))
    outcome = scheduler.run_round()  # every distribution over four moves has a top share >= 0.25
    meter = json.loads((tmp_path / "run" / "round_0" / "evaluate_candidate" / "meter.json").read_text())["summary"]
    assert outcome.status == "refused" and outcome.verdict["check"] == "off"
    assert outcome.verdict["top_move_share"] == pytest.approx(max(meter["moves"].values()))
    played = json.loads((tmp_path / "run" / "round_0" / "evaluate_candidate" / "evaluation.json").read_text())["meter"]
    assert outcome.verdict["sampled_top_move_share"] == pytest.approx(played["sampled"]["top_move_share"])
    assert played["sampled"]["top_move_share"] >= outcome.verdict["top_move_share"] - 1e-9, "T < 1 and top-p sharpen"
    assert outcome.verdict["reason"].startswith("collapsed: ")
    assert Versions(tmp_path / "versions").current().version == 0
    scheduler.close()


def test_the_collapse_verdict():
    from oel.online.gate import compare, refuse_collapse

    passed = compare("meter", "meter_emq", {"meter_emq": 0.5}, {"meter_emq": 0.3}, 0.0)
    assert passed["passed"] is True
    assert refuse_collapse(passed, {"meter_top_move_share": 0.97}, 0.0) is passed  # off
    assert refuse_collapse(passed, {"meter_top_move_share": 0.89}, 0.9)["passed"] is True
    refused = refuse_collapse(passed, {"meter_top_move_share": 0.97}, 0.9)
    assert refused["passed"] is False and refused["reason"] == "collapsed: 97% of its move probability on one answer (>= 90%)"
    assert refuse_collapse(passed, {}, 0.9)["reason"] == "meter_top_move_share missing from the evaluation"
    played = refuse_collapse(passed, {"meter_top_move_share": 0.86, "meter_sampled_top_move_share": 1.0}, 0.9)
    assert played["passed"] is False and played["reason"] == (
        "collapsed as the games sample: 86% of its move probability on one answer becomes 100% (>= 90%)")
    assert refuse_collapse(passed, {"meter_top_move_share": 0.6, "meter_sampled_top_move_share": 0.7}, 0.9)["passed"]
    with pytest.raises(ConfigError, match=r"gate.max_move_share: must be in \[0, 1\]"):
        load_config(OnlineConfig, None, ["gate.max_move_share=1.5"])


def test_the_gate_needs_its_evaluation_part(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="gate.check: games needs evaluate.games.enabled=true"):
        _config(tiny_model, tmp_path, "gate.check=games", "evaluate.games.enabled=false")


def _scheduler_process(tiny: str, root: Path, *extra: str) -> subprocess.Popen:
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr); "
            "import torch; torch.set_num_threads(1); "
            "from oel.config import load_config; from oel.online.config import OnlineConfig; "
            "from oel.online.scheduler import Scheduler; "
            f"Scheduler(load_config(OnlineConfig, None, {overrides(tiny, root, *extra)!r})).run_forever()")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_kill_9_mid_consolidation_then_restart_resumes_the_same_round(tiny_model, tmp_path):
    _fill(tmp_path / "store.sqlite", 3)
    slow = "consolidate.steps=6"
    proc = _scheduler_process(tiny_model, tmp_path, slow)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    checkpoints = tmp_path / "run" / "round_0" / "consolidate" / "checkpoints"
    seen = []
    for line in proc.stderr:  # type: ignore[union-attr]
        seen.append(line)
        if "consolidate started" in line or time.monotonic() > deadline:
            break
    while not (checkpoints.is_dir() and any(checkpoints.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any("consolidate started" in line for line in seen), "".join(seen[-20:])
    assert not (tmp_path / "versions" / "v0001").exists()
    assert json.loads((tmp_path / "versions" / "current.json").read_text())["version"] == 0

    _fill(tmp_path / "store.sqlite", 2, start=3)  # new data must not join the resumed round
    restarted = _scheduler_process(tiny_model, tmp_path, slow)
    _, err = restarted.communicate(timeout=KILL_TIMEOUT_S)
    assert restarted.returncode == 0, err[-3000:]
    assert "round 0: 3 trajectories (resumed)" in err and "round 0: extract already complete, skipped" in err
    versions = Versions(tmp_path / "versions")
    assert [v.version for v in versions.list()] == [0, 1] and versions.get(1).round == 0
    assert versions.current().version == 1
    with Store.open(tmp_path / "store.sqlite") as store:
        stats = store.stats()
        assert (stats["rounds_done"], stats["rounds_started"], stats["trajectories_unconsumed"]) == (1, 0, 2)
        state = json.loads((tmp_path / "run" / "round_0" / "round.json").read_text())
        assert list(store.round(0).trajectory_ids) == state["trajectory_ids"] and len(state["trajectory_ids"]) == 3
    rounds = [r for r in _rows(tmp_path) if r["stage"] == "round"]
    assert [(r["round"], r["status"], r["resumed"]) for r in rounds] == [(0, "published", True)]


# ---- the CLI --------------------------------------------------------------------------------

def _cli(argv: list[str]) -> int:
    from oel.online.cli import register

    parser = argparse.ArgumentParser(prog="oel")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(argv)
    return int(ns.func(ns) or 0)


def test_cli_run_versions_rollback_export_status(tiny_model, tmp_path, one_thread, capsys):
    _fill(tmp_path / "store.sqlite", 2)
    assert _cli(["online", "run", *overrides(tiny_model, tmp_path)]) == 0
    assert _cli(["online", "versions", str(tmp_path / "versions")]) == 0
    out = capsys.readouterr().out
    assert "v0001" in out and "* " in out
    assert _cli(["online", "rollback", str(tmp_path / "versions"), "0"]) == 0
    assert Versions(tmp_path / "versions").current().version == 0
    assert Versions(tmp_path / "versions").history()[-1]["event"] == "rollback"
    assert _cli(["online", "export", str(tmp_path / "store.sqlite"), str(tmp_path / "all.jsonl"), "--round", "0"]) == 0
    assert len(read_trajectories(tmp_path / "all.jsonl")) == 2
    capsys.readouterr()
    assert _cli(["online", "status", *overrides(tiny_model, tmp_path)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["current"]["version"] == 0 and status["versions"] == [0, 1]
    assert status["last_round"]["status"] == "published" and status["store"]["rounds_done"] == 1


def test_cli_errors_are_one_line(tmp_path):
    from oel.errors import DataError

    with pytest.raises(DataError, match="version 3 does not exist"):
        _cli(["online", "rollback", str(tmp_path / "versions"), "3"])


def test_version_retention_and_deleting_conversations_after_the_round(tiny_model, tmp_path, one_thread):
    scheduler = Scheduler(_config(tiny_model, tmp_path, "versions.keep_last=1", "retention=delete_after_consolidation"))
    for r in range(2):
        _fill(tmp_path / "store.sqlite", 2, start=2 * r)
        assert scheduler.run_round().status == "published"
        assert not (tmp_path / "run" / f"round_{r}" / "trajectories.jsonl").exists()
    assert [v.version for v in scheduler.versions.list()] == [0, 2]
    assert scheduler.store.stats()["trajectories_deleted"] == 4
    scheduler.close()


def test_every_minutes_runs_a_round_on_fewer_than_n(tiny_model, tmp_path, one_thread):
    now = [1000.0]
    _fill(tmp_path / "store.sqlite", 1)
    scheduler = Scheduler(_config(tiny_model, tmp_path, "min_trajectories=5", "every_minutes=2"), clock=lambda: now[0])
    assert scheduler.run_round() is None
    now[0] += 121
    assert scheduler.run_round().trajectories == 1
    scheduler.close()


def test_sigterm_stops_a_waiting_scheduler_cleanly(tiny_model, tmp_path):
    proc = _scheduler_process(tiny_model, tmp_path, "max_rounds=0", "poll_s=0.2")
    for line in proc.stderr:  # type: ignore[union-attr]
        if "scheduler running" in line:  # logged once the signal handlers are installed
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=KILL_TIMEOUT_S)
    assert proc.returncode == 0, err[-2000:]


SIGNAL_STORM = 2000
"""SIGTERMs sent at a waiting scheduler in the storm test: enough that some land inside the wait's own code."""
STORM_TAIL_S = 0.01
"""After the storm, the sender's pace: one SIGTERM per this many seconds until the test is done."""
STORM_TIMEOUT_S = 120
"""The storm takes about a second; a hang fails the test well before the suite-wide timeout."""


@pytest.mark.timeout(STORM_TIMEOUT_S)
def test_a_signal_storm_never_deadlocks_the_wait(tiny_model, tmp_path, one_thread):
    """The handler runs on the main thread wherever it is, inside the wait included: it must take no lock.

    (It once called threading.Event.set, whose lock the interrupted Event.wait could be holding; CI hung.)
    """
    import threading

    scheduler = Scheduler(_config(tiny_model, tmp_path, "max_rounds=0", "poll_s=0.001"))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    storm_over, test_done = threading.Event(), threading.Event()

    def storm() -> None:
        for _ in range(SIGNAL_STORM):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.0002)
        storm_over.set()
        # Keep stopping the scheduler until the test is done with it: the loop below may already have
        # cleared the flag the storm's last signal set, and a run_forever then left waiting would hang.
        while not test_done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(STORM_TAIL_S)

    sender = threading.Thread(target=storm)
    stops = 0
    try:
        scheduler._install_signal_handlers()
        sender.start()
        while not storm_over.is_set():
            scheduler._stop_requested = False
            assert scheduler.run_forever() == 0
            stops += 1
        test_done.set()
        sender.join()
        time.sleep(0.05)  # signals still pending run the scheduler's handler, not the default one
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        scheduler.close()
    assert stops > 1


def test_a_second_scheduler_on_the_same_run_dir_is_refused(tiny_model, tmp_path, one_thread):
    from oel.errors import ConfigError
    from oel.online.scheduler import Scheduler

    first = Scheduler(_config(tiny_model, tmp_path))
    try:
        with pytest.raises(ConfigError, match="in use by another running scheduler"):
            Scheduler(_config(tiny_model, tmp_path))
    finally:
        first.close()
    Scheduler(_config(tiny_model, tmp_path)).close()  # released with its holder


def test_the_publish_hook_runs_with_the_new_version_and_a_failing_one_is_logged(tiny_model, tmp_path, one_thread):
    """The serving side's switch for an upstream server (vLLM restart, LoRA load): a real command per version."""
    import sys

    from oel.online.scheduler import Scheduler

    out = tmp_path / "hook.txt"
    script = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(chr(10).join(sys.argv[2:]))"
    hook = f"{sys.executable} -c '{script}' {out} {{version}} {{model_dir}}"
    _fill(tmp_path / "store.sqlite", 2)
    scheduler = Scheduler(_config(tiny_model, tmp_path, f"publish_hook={hook}"))
    assert scheduler.run_round().version == 1
    version, model_dir = out.read_text().split("\n")
    assert version == "1" and model_dir == json.loads((tmp_path / "versions" / "current.json").read_text())["model_dir"]
    assert json.loads((tmp_path / "run" / "round_0" / "publish" / "_complete.json").read_text())["hook_exit"] == 0
    scheduler.close()

    failing = f"{sys.executable} -c 'import sys; sys.exit(\"vllm did not restart\")'"
    _fill(tmp_path / "store.sqlite", 2, start=2)
    scheduler = Scheduler(_config(tiny_model, tmp_path, f"publish_hook={failing}"))
    outcome = scheduler.run_round()
    assert outcome.version == 2  # published: the hook's failure is the operator's to act on
    marker = json.loads((tmp_path / "run" / "round_1" / "publish" / "_complete.json").read_text())
    assert marker["hook_exit"] == 1 and "vllm did not restart" in marker["hook_output"]
    scheduler.close()


@pytest.mark.parametrize("tolerance,published", [(2.0, True), (-2.0, False)])
def test_the_move_quality_gate_compares_held_out_move_quality(tiny_model, tmp_path, one_thread, tolerance, published):
    """Both versions play the same held-out maps; a pass rate of 0 on both sides cannot hide a worse mover."""
    _fill(tmp_path / "store.sqlite", 2)
    scheduler = Scheduler(_config(tiny_model, tmp_path, "gate.check=move_quality", f"gate.tolerance={tolerance}",
                                  "evaluate.games.num_maps=2", "evaluate.games.sampling.max_new_tokens=4"))
    outcome = scheduler.run_round()
    verdict = outcome.verdict
    assert verdict["metric"] == "game_move_quality" and verdict["passed"] is published
    assert (outcome.version == 1) is published
    for which in ("evaluate_candidate", "evaluate_current"):
        saved = json.loads((tmp_path / "run" / "round_0" / which / "evaluation.json").read_text())
        assert saved["games"]["num_maps"] == 2 and saved["ifeval"] is None  # only the gate's part ran
    scheduler.close()
