"""The online mode end to end on a tiny model: simulated users -> gateway -> scheduler round ->
new version published -> the gateway answers with the new weights, no request failing on the way.

Everything is real: the users play FrozenLake over loopback HTTP, the gateway records into a
SQLite store, the scheduler is a child process (`oel online run`) that consolidates and
publishes through current.json, and the gateway hot-swaps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from oel import prompts
from oel.backends.base import SamplingParams
from oel.backends.hf import HFBackend
from oel.backends.tiny import save_tiny_chat_model
from oel.config import load_config
from oel.envs import EnvConfig, make_env
from oel.online.demo import DemoConfig, run_demo
from oel.online.store import Store
from oel.online.versions import Versions

USERS, MAX_TOKENS, TEMPERATURE, TOP_P, TOP_K = 3, 4, 0.7, 0.9, 30


def _answer(model_dir: str, seed: int, episode_seed: int) -> str:
    """What `model_dir` answers to the first turn of the episode on map `episode_seed`."""
    from oel.models import ModelConfig, load_model

    lm = load_model(ModelConfig(name=model_dir, dtype="float32", device="cpu"))
    backend = HFBackend(lm.model, lm.tokenizer, model_id="direct")
    messages = prompts.turn_messages(prompts.POLICY_TEMPLATE, make_env(EnvConfig()).reset(episode_seed))
    params = SamplingParams(temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K, max_new_tokens=MAX_TOKENS, seed=seed)
    return backend.chat_with_seeds([messages], params, [seed])[0].text


@pytest.mark.slow
def test_users_gateway_scheduler_new_version_served(tmp_path: Path, one_thread: None) -> None:
    tiny = save_tiny_chat_model(tmp_path / "base", seed=5)
    config = load_config(DemoConfig, None, [
        f"run_dir={tmp_path / 'demo'}", f"users={USERS}", "max_episodes=400", "rounds=1", "timeout_minutes=6",
        f"max_tokens={MAX_TOKENS}", f"temperature={TEMPERATURE}", f"top_p={TOP_P}", f"top_k={TOP_K}",
        f"online.model.name={tiny}", "online.model.dtype=float32", "online.model.device=cpu",
        "online.min_trajectories=4", "online.max_trajectories=4", "online.poll_s=0.2",
        "online.extract.kind=raw_trajectories", "online.extract.num_runs=1", "online.extract.budget_tokens=3000",
        "online.consolidate.steps=2", "online.consolidate.batch_size=2", "online.consolidate.micro_batch_size=1",
        "online.consolidate.max_new_tokens=3", "online.consolidate.lr=0.05", "online.consolidate.finetune=full",
        # the exact-meter gate runs on both versions; a tolerance of 1 publishes whatever it finds
        "online.gate.check=meter", "online.gate.tolerance=1.0", "online.evaluate.meter.max_layouts=2",
    ])
    summary = run_demo(config)
    assert summary["user_errors"] == []
    assert summary["versions"] == [0, 1] and summary["current"] == 1

    rows = [json.loads(line) for line in (tmp_path / "demo" / "users.jsonl").read_text().splitlines()]
    served = {v for r in rows for v in r["versions"]}
    assert served == {0, 1}, served  # both versions answered users, and no turn went unanswered (-1)
    with Store.open(tmp_path / "demo" / "store.sqlite") as store:
        stats = store.stats()
    assert stats["trajectories_stored"] == len(rows)  # every ended session became one trajectory

    # The answers after the swap are the new weights' own answers (and not the old ones').
    v1 = Versions(tmp_path / "demo" / "versions").get(1).model_dir
    late = next(r for r in rows if r["versions"][0] == 1)
    seed = late["seed"] * 100
    assert late["responses"][0] == _answer(v1, seed, late["seed"])
    early = next(r for r in rows if r["versions"][0] == 0)
    assert early["responses"][0] == _answer(tiny, early["seed"] * 100, early["seed"])
    assert _answer(v1, seed, late["seed"]) != _answer(tiny, seed, late["seed"])
    assert not torch.equal(*(load_first_weight(d) for d in (tiny, v1)))

    # The online report: the round, the version it published, the users' episodes per version.
    from oel.cli import main

    assert main(["report", str(tmp_path / "demo")]) == 0
    report = (tmp_path / "demo" / "report" / "report.md").read_text()
    assert "| 0 |" in report and "v0001" in report and (tmp_path / "demo" / "report" / "online_timeline.png").is_file()
    assert f"{len(rows)} episodes" in report
    (meter_row,) = [line for line in report.splitlines() if line.startswith("| 0 | ") and " -> " in line]
    assert meter_row.count("%") >= 5 and "[" in meter_row  # start, candidate, paired CI, state-blind, P(invalid)

    # Run again: the round is already done (rounds=1), so no scheduler starts; the users play one more
    # episode each, all of it answered by v1, past max_episodes if need be.
    again = run_demo(config)
    assert again["user_errors"] == [] and again["current"] == 1
    more = [json.loads(line) for line in (tmp_path / "demo" / "users.jsonl").read_text().splitlines()][len(rows):]
    assert len(more) == USERS and all(set(r["versions"]) == {1} for r in more)
    assert sorted(r["episode"] for r in more) == list(range(len(rows), len(rows) + USERS))


def load_first_weight(model_dir: str) -> torch.Tensor:
    from safetensors.torch import load_file

    state = load_file(str(next(Path(model_dir).glob("*.safetensors"))))
    return state[sorted(state)[0]]
