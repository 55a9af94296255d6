"""Learning rounds over the online store: atomic claims, resume, failure, export, retention."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from oel.errors import ConfigError, DataError
from oel.online import ConflictError, NotFoundError, Store
from oel.trajectory import Message, Trajectory, Turn, read_trajectories

CLAIM_THREADS = 8
POOL = 60
BATCH = 4


def traj(i: int) -> Trajectory:
    prompt = [Message(role="user", content=f"board {i}")]
    return Trajectory(id=f"t{i}", env_id="E", seed=i, model_id="m", outcome="success", passed=True,
                      turns=[Turn(prompt=prompt, observation=f"board {i}", response="[right]")])


@pytest.fixture
def store(store_url: str) -> Store:
    """On SQLite and on PostgreSQL (tests/conftest.py: store_url)."""
    s = Store.open(store_url)
    yield s
    s.close()


def fill(store: Store, n: int, start: int = 0) -> list[str]:
    return [store.add_trajectory("c", traj(i)).trajectory_id for i in range(start, start + n)]


def session(store: Store, name: str, text: str) -> str:
    store.record_exchange("c", [{"role": "user", "content": text}], "answer", session_id=name)
    return store.end_session("c", name, "done").trajectory_id


def count(store: Store, table: str) -> int:
    """Rows of a table, read on a connection of the store's own backend."""
    with store._snapshot() as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# ---- claim, resume, finish, fail -------------------------------------------------------------------


def test_claim_takes_the_oldest_and_resumes_an_unfinished_round(store: Store) -> None:
    ids = fill(store, 5)
    assert store.claim_round(6) is None
    r0 = store.claim_round(2, max_trajectories=3)
    assert (r0.number, r0.trajectory_ids, r0.status, r0.resumed) == (0, tuple(ids[:3]), "started", False)
    assert store.count_unconsumed() == 2
    again = store.claim_round(1)
    assert (again.number, again.trajectory_ids, again.resumed) == (0, r0.trajectory_ids, True)
    assert store.finish_round(0).status == "done"
    assert store.finish_round(0).status == "done"  # a retry after a crash changes nothing
    r1 = store.claim_round(1)
    assert (r1.number, r1.trajectory_ids) == (1, tuple(ids[3:]))
    assert store.stats()["trajectories_claimed"] == 2 and store.stats()["trajectories_consumed"] == 3


def test_failed_round_returns_its_trajectories_until_they_are_held(store_url: str) -> None:
    with Store.open(store_url, max_failed_rounds=2) as store:
        ids = tuple(fill(store, 3))
        assert store.claim_round(3).trajectory_ids == ids
        assert store.fail_round(0).status == "failed"
        assert store.fail_round(0).status == "failed"  # a retry does not count a second failure
        assert store.count_unconsumed() == 3
        with pytest.raises(ConflictError, match="^round 0 is failed, it cannot become done$"):
            store.finish_round(0)
        r1 = store.claim_round(3)
        assert (r1.number, r1.trajectory_ids) == (1, ids)  # a new number, the same data
        store.fail_round(1)
        assert store.count_unconsumed() == 0 and store.claim_round(1) is None
        stats = store.stats()
        assert (stats["trajectories_held"], stats["rounds_failed"]) == (3, 2)
        assert store.round(0).trajectory_ids == ids
        fresh = fill(store, 1, start=10)
        assert store.claim_round(1).trajectory_ids == tuple(fresh)
        store.finish_round(2)
        with pytest.raises(ConflictError, match="^round 2 is done, it cannot become failed$"):
            store.fail_round(2)
        with pytest.raises(NotFoundError, match="^round 7 not found$"):
            store.finish_round(7)


def test_claim_arguments_are_checked(store: Store) -> None:
    with pytest.raises(ConfigError, match="^min_trajectories: expected an integer >= 1, got 0$"):
        store.claim_round(0)
    with pytest.raises(ConfigError, match="^max_trajectories: expected an integer >= 3, got 2$"):
        store.claim_round(3, max_trajectories=2)


def claim_until_empty(store: Store, worker: str, got: list[tuple[int, tuple[str, ...]]]) -> None:
    while (r := store.claim_round(1, max_trajectories=BATCH, worker=worker)) is not None:
        got.append((r.number, r.trajectory_ids))
        store.finish_round(r.number)


def test_concurrent_claimers_never_overlap(store_url: str) -> None:
    """Half the workers share one Store (one connection, its lock), half have their own (SQLite's file
    lock; PostgreSQL's writers' row lock): each round claimed once, no trajectory in two rounds."""
    shared = Store.open(store_url)
    ids = fill(shared, POOL)
    own = [Store.open(store_url) for _ in range(CLAIM_THREADS // 2)]
    stores = [shared] * (CLAIM_THREADS // 2) + own
    got: list[list[tuple[int, tuple[str, ...]]]] = [[] for _ in stores]
    threads = [threading.Thread(target=claim_until_empty, args=(s, f"w{i}", got[i])) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [i for g in got for _, batch in g for i in batch]
    assert sorted(claimed) == sorted(ids) and len(claimed) == len(set(claimed))
    numbers = [n for g in got for n, _ in g]
    assert sorted(numbers) == list(range(len(numbers)))
    for s in own + [shared]:
        s.close()


TWO_SCHEDULERS = """
import json, sys, time
from oel.online import Store
store = Store.open(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[4]) - time.time()))  # both start claiming at once
while (r := store.claim_round(1, max_trajectories=int(sys.argv[3]), worker=sys.argv[2])) is not None:
    print(json.dumps([r.number, list(r.trajectory_ids)]), flush=True)
    store.finish_round(r.number)
"""


def test_two_scheduler_processes_claim_each_round_once(store_url: str) -> None:
    """Two processes (two hosts' schedulers, as far as the database can tell) race over one pool while
    a third keeps posting: every round is claimed once, no trajectory is in two rounds."""
    import json
    import subprocess
    import sys
    import time

    with Store.open(store_url) as poster:
        ids = fill(poster, POOL)
        start = str(time.time() + 3.0)
        procs = [subprocess.Popen([sys.executable, "-c", TWO_SCHEDULERS, store_url, f"host{i}", str(BATCH), start],
                                  stdout=subprocess.PIPE, text=True) for i in range(2)]
        ids += fill(poster, POOL // 2, start=POOL)  # arrivals while they claim
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
        rounds = [json.loads(line) for out in outs for line in out.splitlines()]
        rest = poster.claim_round(1, worker="after")
        if rest is not None:  # posted after both found the pool empty
            rounds.append([rest.number, list(rest.trajectory_ids)])
        numbers = sorted(n for n, _ in rounds)
        claimed = [i for _, batch in rounds for i in batch]
        assert numbers == list(range(len(numbers)))  # each round number given once
        assert sorted(claimed) == sorted(ids) and len(claimed) == len(set(claimed))
        assert all(list(poster.round(n).trajectory_ids) == batch for n, batch in rounds)


def test_concurrent_claims_of_one_worker_are_one_round(store: Store) -> None:
    fill(store, POOL)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(store.claim_round(BATCH, max_trajectories=BATCH))) for _ in range(CLAIM_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {(r.number, r.trajectory_ids) for r in results} == {(0, results[0].trajectory_ids)}
    assert sum(not r.resumed for r in results) == 1
    assert store.count_unconsumed() == POOL - BATCH


# ---- export ----------------------------------------------------------------------------------------


def test_export_is_read_by_read_trajectories(store: Store, tmp_path: Path) -> None:
    fill(store, 3)
    session(store, "s", "a question")
    r = store.claim_round(2, max_trajectories=2)
    assert store.export_jsonl(tmp_path / "all.jsonl") == 4
    assert read_trajectories(tmp_path / "all.jsonl") == store.trajectories()
    assert store.export_jsonl(tmp_path / "round.jsonl", round=r.number) == 2
    assert [t.id for t in read_trajectories(tmp_path / "round.jsonl")] == list(r.trajectory_ids)
    with pytest.raises(NotFoundError):
        store.export_jsonl(tmp_path / "x.jsonl", round=9)
    assert not (tmp_path / "x.jsonl").exists()


# ---- retention -------------------------------------------------------------------------------------


def retention_scene(store: Store) -> dict[str, list[str]]:
    """Rounds 0 and 1 done, round 2 started, round 3 failed, one trajectory never claimed, one session open."""
    ids: dict[str, list[str]] = {}
    for r, worker in enumerate(["scheduler", "scheduler", "scheduler", "other"]):
        ids[f"r{r}"] = [session(store, f"r{r}-s", f"round {r} question"), *fill(store, 1, start=r)]
        assert store.claim_round(2, max_trajectories=2, worker=worker).trajectory_ids == tuple(ids[f"r{r}"])
        if r < 2:
            store.finish_round(r)
    store.fail_round(3)
    ids["pool"] = fill(store, 1, start=9)
    store.record_exchange("c", [{"role": "user", "content": "still talking"}], "yes", session_id="open")
    return ids


def test_delete_consumed_deletes_what_it_says_and_nothing_else(store: Store) -> None:
    ids = retention_scene(store)
    before = {t.id: t for t in store.trajectories()}
    exchanges_before = count(store, "exchanges")
    deleted = store.delete_consumed(before_round=1)
    assert (deleted.trajectories, deleted.sessions, deleted.exchanges) == (2, 1, 1)
    after = {t.id: t for t in store.trajectories()}
    assert set(before) - set(after) == set(ids["r0"])
    assert all(after[i] == before[i] for i in after)
    assert count(store, "exchanges") == exchanges_before - 1
    assert store.round(0).trajectory_ids == tuple(ids["r0"])  # the round keeps its ids, no content
    with pytest.raises(DataError, match="^round 0: 2 of its 2 trajectories were deleted by retention$"):
        store.trajectories(round=0)
    # round 1 is done; round 2 is started, round 3's trajectories are back in the pool: both kept
    assert store.delete_consumed(before_round=99).trajectories == 2
    assert {t.id for t in store.trajectories()} == {*ids["r2"], *ids["r3"], *ids["pool"]}
    stats = store.stats()
    assert (stats["trajectories_deleted"], stats["exchanges_deleted"], stats["sessions_open"]) == (4, 2, 1)


def test_delete_after_consolidation_deletes_at_finish(store_url: str) -> None:
    with Store.open(store_url, retention="delete_after_consolidation") as store:
        kept = session(store, "other", "not in the round")
        first = session(store, "mine", "in the round")
        store.add_trajectory("c", traj(0), idempotency_key="k")
        r = store.claim_round(2, max_trajectories=2)
        store.fail_round(r.number)  # a failed round deletes nothing
        assert len(store.trajectories()) == 3
        r = store.claim_round(2, max_trajectories=2)
        assert r.trajectory_ids == (kept, first)
        store.finish_round(r.number)
        assert [t.meta["online"]["posted_id"] for t in store.trajectories()] == ["t0"]
        assert count(store, "exchanges") == 0 and count(store, "sessions") == 0
        r = store.claim_round(1)
        store.finish_round(r.number)
        assert store.trajectories() == []
        retry = store.add_trajectory("c", traj(0), idempotency_key="k")  # the key outlives its trajectory
        assert retry.duplicate and store.trajectories() == []
