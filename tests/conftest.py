"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

GRID_OBSERVATIONS = ["Turn 1\nP . .\n. H .\n. . G", "Turn 2\n. P .\n. H .\n. . G",
                     "Turn 1\nP . H\n. . .\nH . G", "Turn 2\n. . H\nP . .\nH . G"]
GRID_KNOWLEDGE = ["Holes are H. Go right.", "G is the goal; avoid H."]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine, OpenMP spin-waiting makes tiny models ~20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def grid_consolidation_inputs(tmp_path: Path) -> str:
    """A consolidation round's inputs in `tmp_path`: t.jsonl (one trajectory of policy-template turns),
    k0.txt and k1.txt (two knowledge texts); returns the directory of a tiny random chat model."""
    from oel import prompts
    from oel.backends.tiny import save_tiny_chat_model
    from oel.trajectory import Message, Trajectory, Turn, write_trajectories

    turns = [Turn(prompt=[Message(role="user", content=prompts.get("policy_grid_v1").render(observation=o))],
                  observation=o, response="[right]") for o in GRID_OBSERVATIONS]
    write_trajectories(tmp_path / "t.jsonl", [Trajectory(id="t", env_id="tiny", seed=0, model_id="tiny", turns=turns,
                                                         outcome="failure", passed=False)])
    for i, text in enumerate(GRID_KNOWLEDGE):
        (tmp_path / f"k{i}.txt").write_text(text)
    return save_tiny_chat_model(tmp_path / "model", seed=2)


@pytest.fixture
def grid_consolidation_config(tmp_path: Path, grid_consolidation_inputs: str):
    """Builds one-step `oel consolidate` configs (ConsolidateCommandConfig) over `grid_consolidation_inputs` (float32 tiny model, batch 4,
    both knowledge texts): `make(run_name, **overrides)` writes its run under tmp_path / run_name."""
    from oel.consolidate import ConsolidateCommandConfig
    from oel.models import ModelConfig

    def make(run_name: str, **overrides):
        fields = dict(trajectories=str(tmp_path / "t.jsonl"),
                      knowledge=[str(tmp_path / f"k{i}.txt") for i in range(len(GRID_KNOWLEDGE))],
                      output_dir=str(tmp_path / run_name),
                      model=ModelConfig(name=grid_consolidation_inputs, dtype="float32", device="cpu"),
                      steps=1, batch_size=4, micro_batch_size=4, max_new_tokens=3, top_k=16)
        return ConsolidateCommandConfig(**{**fields, **overrides})

    return make


@pytest.fixture(scope="module")
def distill_world(tmp_path_factory) -> dict[str, str]:
    """The consolidation tests' tiny world on disk (tests/distill_world.py): trajectories, the lesson,
    the pretrained model and a random one."""
    from distill_world import pretrained_model, write_inputs

    from oel.backends.tiny import save_tiny_chat_model

    d = tmp_path_factory.mktemp("distill")
    traj, know = write_inputs(d)
    return {"traj": str(traj), "knowledge": str(know), "pretrained": pretrained_model(d),
            "random": save_tiny_chat_model(d / "random", seed=5)}


# ---- the online store on both backends (SQLite file, PostgreSQL server) ---------------------

STORE_BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_databases():
    """A throwaway PostgreSQL cluster for the session (tests/pg_server.py); skips saying why if there is none."""
    import pg_server

    reason = pg_server.why_unavailable()
    if reason:
        pytest.skip(f"PostgreSQL store tests: {reason}")
    with pg_server.cluster() as admin_url:
        yield pg_server.Databases(admin_url)


@pytest.fixture
def pg_url(pg_databases) -> str:
    """A fresh, empty PostgreSQL database for one test, dropped after it."""
    url = pg_databases.create()
    yield url
    pg_databases.drop(url)


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's store lives: a new SQLite file, or a new PostgreSQL database (the same tests run on both)."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite")
    return request.getfixturevalue("pg_url")
