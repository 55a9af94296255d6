"""Collection end to end on the real FrozenLake: batching, recording, resume, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from oel.backends.base import Generation, SamplingParams
from oel.backends.hf import HFBackend
from oel.backends.tiny import tiny_chat_model
from oel.config import updated
from oel.collect.play import (CollectCommandConfig, CollectConfig, Maps, collect, collect_command, select_jobs,
                              summary_path)
from oel.envs import EnvConfig, make_env
from oel.errors import ConfigError
from oel.rollout import EpisodeJob, pending_jobs, play_episodes, trajectory_id
from oel.trajectory import Message, read_trajectories

MOVES = ("[up]", "[down]", "[left]", "[right]")
KILL_WAIT_S = 120


class ScriptedBackend:
    """A fake policy: cycles through moves, counts calls and batch sizes. No `chat_with_seeds`."""

    model_id = "scripted"

    def __init__(self, moves: Sequence[str] = MOVES, delay_s: float = 0.0) -> None:
        self.moves, self.delay_s, self.calls, self.batch_sizes = list(moves), delay_s, 0, []

    def chat(self, prompts: Sequence[Sequence[Message]], params: SamplingParams) -> list[Generation]:
        time.sleep(self.delay_s)
        self.batch_sizes.append(len(prompts))
        out = [Generation(self.moves[(self.calls + i) % len(self.moves)], 11, 2) for i in range(len(prompts))]
        self.calls += 1
        return out


def config(tmp_path: Path, **kw: object) -> CollectCommandConfig:
    base = dict(seeds="heldout", num_seeds=6, samples_per_seed=2, batch_size=4,
                out=str(tmp_path / "traj.jsonl"), sampling=SamplingParams(max_new_tokens=6))
    return CollectCommandConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_end_to_end_tiny_model_on_frozenlake(tmp_path: Path) -> None:
    model, tok = tiny_chat_model(dtype=torch.float32)
    backend = HFBackend(model, tok, model_id="tiny", max_batch_size=8)
    cfg = config(tmp_path, num_seeds=3, round=2, seeds="collect")
    stats = collect_command(cfg, backend=backend)
    trajs = read_trajectories(cfg.out)
    assert stats.episodes == len(trajs) == 6 and stats.skipped == 0
    assert {(t.seed, t.sample) for t in trajs} == {(j.seed, j.sample) for j in select_jobs(cfg.settings(), cfg.maps())}
    for t in trajs:
        assert t.env_id == "FrozenLake-v0-raw" and t.round == 2 and t.model_id == "tiny"
        assert t.outcome and t.meta["prompt"]["name"] == "policy_grid_v1"
        for turn in t.turns:
            assert turn.prompt == [Message(role="user", content=turn.prompt[0].content)]
            assert turn.observation in turn.prompt[0].content
            assert turn.prompt_tokens == len(backend.encode(turn.prompt))
            assert 1 <= turn.response_tokens <= 6
    assert stats.turns == sum(len(t.turns) for t in trajs)
    assert stats.response_tokens == sum(t.num_response_tokens for t in trajs)
    summary = json.loads(summary_path(cfg.out).read_text())
    assert summary["episodes"] == 6 and summary["generation_tokens_per_s"] > 0


def test_episodes_advance_together_and_slots_refill(tmp_path: Path) -> None:
    backend = ScriptedBackend(moves=["[right]", "[left]"])  # never ends early: turn cap or invalid
    jobs = [EpisodeJob(s) for s in range(7)]
    trajs = play_episodes(backend, lambda: make_env(EnvConfig()), jobs, SamplingParams(), batch_size=3)
    assert sorted(t.seed for t in trajs) == list(range(7))
    assert max(backend.batch_sizes) == 3
    assert backend.calls < sum(len(t.turns) for t in trajs), "turns of different episodes share calls"


def test_episodes_of_several_sampling_seeds_in_one_call_play_as_each_seed_alone(tmp_path: Path) -> None:
    """A job's own sampling seed (how an evaluation plays all its seeds together) gives the episode that
    seed gives it in a call of its own: same random stream, same answers, the seed recorded."""
    model, tok = tiny_chat_model(dtype=torch.float32)
    backend = HFBackend(model, tok, model_id="tiny", max_batch_size=8)
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=6)
    env = lambda: make_env(EnvConfig(game="blackjack"))  # noqa: E731
    seeds = (7, 8)
    together = play_episodes(backend, env, [EpisodeJob(m, k, sampling_seed=s) for m in range(3)
                                            for k, s in enumerate(seeds)], params, batch_size=6)
    alone = [t for k, s in enumerate(seeds)
             for t in play_episodes(backend, env, [EpisodeJob(m, k) for m in range(3)], updated(params, seed=s))]
    key = lambda t: (t.seed, t.sample)  # noqa: E731
    assert [[turn.response for turn in t.turns] for t in sorted(together, key=key)] == \
        [[turn.response for turn in t.turns] for t in sorted(alone, key=key)]
    assert {t.sample: t.meta["sampling"]["seed"] for t in together} == {0: 7, 1: 8}


def test_recorded_turns_replay_exactly(tmp_path: Path) -> None:
    """Replaying each trajectory's responses on a fresh env reproduces observations and feedback."""
    trajs = play_episodes(ScriptedBackend(), lambda: make_env(EnvConfig()), [EpisodeJob(s) for s in range(4)],
                          SamplingParams(), batch_size=4)
    for t in trajs:
        env = make_env(EnvConfig())
        obs = env.reset(t.seed)
        for turn in t.turns:
            assert turn.observation == obs
            result = env.step(turn.response)
            assert (result.feedback, result.action) == (turn.feedback, turn.action)
            obs = result.observation
        assert (result.done, result.outcome, result.passed) == (True, t.outcome, t.passed)


def test_rerun_skips_what_is_on_file_and_repairs_a_torn_tail(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    first = collect_command(config(tmp_path, num_seeds=2), backend=ScriptedBackend())
    assert first.episodes == 4
    with open(cfg.out, "a") as f:
        f.write('{"schema_version": 1, "id": "torn')  # what a kill mid-write leaves
    second = collect_command(cfg, backend=ScriptedBackend())
    assert (second.skipped, second.episodes) == (4, 8)
    ids = [t.id for t in read_trajectories(cfg.out)]
    assert len(ids) == len(set(ids)) == 12
    third = collect_command(cfg, backend=ScriptedBackend())
    assert (third.skipped, third.episodes) == (12, 0)


def test_pending_jobs_on_missing_or_empty_file(tmp_path: Path) -> None:
    jobs = [EpisodeJob(1), EpisodeJob(1, 1)]
    assert pending_jobs(tmp_path / "none.jsonl", jobs, "E", 0) == jobs
    (tmp_path / "empty.jsonl").write_text("")
    assert pending_jobs(tmp_path / "empty.jsonl", jobs, "E", 0) == jobs
    assert trajectory_id("E", 3, EpisodeJob(5, 2)) == "E-r3-s5-k2"


def test_knowledge_fills_the_teacher_template(tmp_path: Path) -> None:
    (tmp_path / "k.txt").write_text("- EXPERIENCE ITEM: H is a hole.\n")
    cfg = config(tmp_path, num_seeds=1, samples_per_seed=1, prompt="teacher_grid_v1",
                 knowledge_file=str(tmp_path / "k.txt"))
    collect_command(cfg, backend=ScriptedBackend())
    (t,) = read_trajectories(cfg.out)
    assert "H is a hole." in t.turns[0].prompt[0].content
    with pytest.raises(ConfigError, match="knowledge"):
        collect_command(config(tmp_path, out=str(tmp_path / "x.jsonl"), knowledge_file=str(tmp_path / "k.txt")),
                backend=ScriptedBackend())


def test_the_library_takes_its_inputs_as_arguments_and_makes_the_backend_when_needed(tmp_path: Path) -> None:
    settings = CollectConfig(num_seeds=2, batch_size=2, sampling=SamplingParams(max_new_tokens=6))
    made: list[int] = []

    def make() -> ScriptedBackend:
        made.append(1)
        return ScriptedBackend()

    out = tmp_path / "t.jsonl"
    first = collect(settings, make, env=EnvConfig(), maps=Maps("collect", round=1), out=out)
    again = collect(settings, make, env=EnvConfig(), maps=Maps("collect", round=1), out=out)
    assert made == [1] and first.episodes == 2 and (again.skipped, again.episodes) == (2, 0)
    assert {t.round for t in read_trajectories(out)} == {1}
    with pytest.raises(ConfigError, match=r"^seed_offset: must be >= 0"):
        collect(settings, make, env=EnvConfig(), maps=Maps("collect", offset=-1), out=out)


def test_the_command_keeps_its_keys_in_their_order() -> None:
    """`oel collect`'s keys, and its saved <out>.config.yaml, as before its inputs became arguments."""
    from oel.config import describe, to_dict

    order = ["env", "backend", "model", "endpoint", "max_batch_size", "max_batch_tokens", "seeds", "num_seeds",
             "seed_offset", "samples_per_seed", "round", "sampling", "batch_size", "prompt", "knowledge_file", "out"]
    assert list(to_dict(CollectCommandConfig())) == order
    assert [key.split(".")[0] for key, *_ in describe(CollectCommandConfig)][:5] == ["env"] * 5
    # an error about the whole config names it as it did (the settings' class), for each command
    from oel.config import load_config
    from oel.consolidate import ConsolidateCommandConfig

    with pytest.raises(ConfigError, match=r"^ConsolidateConfig: steps: must be >= 1, got 0$"):
        load_config(ConsolidateCommandConfig, None, ["steps=0"])


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="num_seeds"):
        CollectCommandConfig(seeds="heldout", num_seeds=129)
    with pytest.raises(ConfigError, match="batch_size"):
        CollectCommandConfig(batch_size=0)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from oel.backends.base import Generation
    from oel.collect.play import CollectCommandConfig, collect_command

    class Slow:
        model_id = "slow"
        def chat(self, prompts, params):
            time.sleep(0.05)
            return [Generation("[right] then [down]", 10, 3) for _ in prompts]

    collect_command(CollectCommandConfig(seeds="heldout", num_seeds=40, samples_per_seed=2, batch_size=4,
                                         out=sys.argv[1]),
            backend=Slow())
""")


def test_kill_minus_nine_then_rerun_gives_each_episode_once(tmp_path: Path) -> None:
    out = tmp_path / "traj.jsonl"
    script = tmp_path / "play.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 10):
        assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = out.read_bytes().count(b"\n")
    assert 10 <= done_before < 80, "the kill must land mid-collection"
    with open(out, "ab") as f:  # and a torn line, as a kill inside write() would leave
        f.write(b'{"schema_version": 1, "id": "Froz')
    rerun = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    trajs = read_trajectories(out)
    keys = [(t.seed, t.sample) for t in trajs]
    assert len(keys) == len(set(keys)) == 80
    assert json.loads(summary_path(out).read_text())["skipped"] >= done_before


def test_oel_collect_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from oel.cli import main
    from oel.backends.tiny import save_tiny_chat_model

    model_dir = save_tiny_chat_model(tmp_path / "tiny")
    out = tmp_path / "c" / "traj.jsonl"
    args = ["collect", f"model.name={model_dir}", "model.dtype=float32", "seeds=heldout", "num_seeds=2",
            "batch_size=2", "sampling.max_new_tokens=3", f"out={out}"]
    assert main(args) == 0
    assert "pass rate" in capsys.readouterr().out
    assert len(read_trajectories(out)) == 2
    assert (tmp_path / "c" / "traj.config.yaml").exists()
    assert main(args) == 0 and "(2 already on file)" in capsys.readouterr().out
    assert main(["collect", "num_seeds=zero"]) == 2
    assert "num_seeds: expected an integer" in capsys.readouterr().err
