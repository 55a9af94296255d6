"""kill -9 of a process writing to the online store: nothing acknowledged is lost, nothing is doubled.

The child prints each result only after the store call returns (flushed), which is when a gateway
would acknowledge the request; the parent kills it mid-way with SIGKILL and reopens the file.
SIGKILL leaves the OS's page cache intact, so this checks SQLite's transactions and our use of
them, not the disk's fsync (WAL + synchronous=FULL is what covers a power loss). Every test runs
on SQLite and on PostgreSQL (`store_url`), where the killed process is the client and the server
rolls back what it had not committed.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from oel.online import Store
from oel.trajectory import Message, Trajectory, Turn

CHILD_TIMEOUT_S = 60
WRITER_THREADS = 4
POOL = 40



def traj(i: int) -> Trajectory:
    """A trajectory of about 2 kB, so that each write takes a while and a kill lands inside some."""
    obs = f"board {i} " + "x" * 2000
    return Trajectory(id=f"t{i}", env_id="E", seed=i, model_id="m", outcome="success", passed=True,
                      turns=[Turn(prompt=[Message(role="user", content=obs)], observation=obs, response="[up]")])


TRAJECTORY_CODE = inspect.getsource(traj)

WRITER = """
import sys, threading
from oel.online import Store
from oel.trajectory import Message, Trajectory, Turn
""" + TRAJECTORY_CODE + """
store = Store.open(sys.argv[1])
printing = threading.Lock()
def write(first, step):
    for i in range(first, 10**6, step):
        added = store.add_trajectory("c", traj(i), idempotency_key=f"k{i}")
        with printing:
            print(i, added.trajectory_id, flush=True)
threads = [threading.Thread(target=write, args=(t, int(sys.argv[2]))) for t in range(int(sys.argv[2]))]
for t in threads: t.start()
for t in threads: t.join()
"""

CLAIMER = """
import json, sys, time
from oel.online import Store
from oel.trajectory import Message, Trajectory, Turn
""" + TRAJECTORY_CODE + """
store = Store.open(sys.argv[1])
for i in range(int(sys.argv[2])):
    store.add_trajectory("c", traj(i))
print(json.dumps(["ready"]), flush=True)
while True:
    r = store.claim_round(1, max_trajectories=3)
    print(json.dumps(["claimed", r.number, r.trajectory_ids]), flush=True)
    if sys.argv[3] == "hang":
        time.sleep(CHILD_TIMEOUT_S)
    store.finish_round(r.number)
    print(json.dumps(["finished", r.number]), flush=True)
""".replace("CHILD_TIMEOUT_S", str(CHILD_TIMEOUT_S))

def run_and_kill(code: str, args: list[str], enough) -> list[str]:
    """Run `code` until `enough(lines)` says so, SIGKILL it, return every complete line it printed."""
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        while not enough(lines):
            line = child.stdout.readline()
            assert line, f"the child stopped early (exit {child.poll()})"
            lines.append(line)
        os.kill(child.pid, signal.SIGKILL)
        rest = child.stdout.read()
    finally:
        child.kill()
        child.wait(CHILD_TIMEOUT_S)
    assert child.returncode == -signal.SIGKILL
    return [line for line in lines + rest.splitlines(keepends=True) if line.endswith("\n")]


def integrity(path: str) -> str:
    """SQLite's own check of the file; a PostgreSQL server has no client-side file to check."""
    if path.startswith("postgresql://"):
        return "ok"
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("kill_after", [3, 60])
def test_killed_writer_loses_no_acknowledged_trajectory(store_url: str, kill_after: int) -> None:
    path = store_url
    lines = run_and_kill(WRITER, [str(path), str(WRITER_THREADS)], lambda got: len(got) >= kill_after)
    acked = dict(tuple(map(str, line.split())) for line in lines)
    assert len(acked) >= kill_after
    assert integrity(path) == "ok"
    with Store.open(path) as store:
        stored = store.trajectories()
        posted = [t.meta["online"]["posted_id"] for t in stored]
        assert len(posted) == len(set(posted))  # nothing twice
        by_id = {t.id: t.meta["online"]["posted_id"] for t in stored}
        assert all(by_id.get(tid) == f"t{i}" for i, tid in acked.items())  # everything acknowledged
        # the clients retry everything they sent, acknowledged or not: each is stored exactly once
        sent = range(max(map(int, acked)) + WRITER_THREADS + 1)
        retried = {str(i): store.add_trajectory("c", traj(i), idempotency_key=f"k{i}") for i in sent}
        assert all(retried[i].trajectory_id == tid and retried[i].duplicate for i, tid in acked.items())
        posted = sorted(t.meta["online"]["posted_id"] for t in store.trajectories())
        assert posted == sorted(f"t{i}" for i in sent)


def test_claimed_round_survives_a_kill_and_resumes_with_the_same_ids(store_url: str) -> None:
    path = store_url
    lines = run_and_kill(CLAIMER, [str(path), "5", "hang"], lambda got: len(got) >= 2)
    _, number, ids = json.loads(lines[1])
    with Store.open(path) as store:
        resumed = store.claim_round(1, max_trajectories=3)
        assert (resumed.number, list(resumed.trajectory_ids), resumed.resumed) == (number, ids, True)
        assert store.count_unconsumed() == 2 and store.stats()["trajectories_claimed"] == 3


def test_killed_round_loop_never_runs_a_round_twice(store_url: str) -> None:
    path = store_url
    lines = run_and_kill(CLAIMER, [str(path), str(POOL), "loop"],
                         lambda got: sum('"claimed"' in line for line in got) >= POOL // 6)
    assert integrity(path) == "ok"
    claimed = {rec[1]: rec[2] for rec in map(json.loads, lines[1:]) if rec[0] == "claimed"}
    with Store.open(path) as store:
        assert all(list(store.round(n).trajectory_ids) == ids for n, ids in claimed.items())
        unfinished = [n for n in claimed if store.round(n).status == "started"]
        resumed = store.claim_round(1, max_trajectories=3)
        if unfinished:  # the kill fell between a claim and its finish
            assert (resumed.number, list(resumed.trajectory_ids), resumed.resumed) == (unfinished[0], claimed[unfinished[0]], True)
        while resumed is not None:
            store.finish_round(resumed.number)
            resumed = store.claim_round(1, max_trajectories=3)
        done = store.stats()["rounds_done"]
        in_rounds = [i for n in range(done) for i in store.round(n).trajectory_ids]
        assert len(in_rounds) == len(set(in_rounds)) == POOL  # every trajectory in exactly one round
        assert done >= len(claimed)
