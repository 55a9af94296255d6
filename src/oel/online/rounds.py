"""Learning rounds over the store: claim a batch, finish or fail it, and retention after it.

Functions over a connection inside a write transaction (the Store holds the lock and the
transaction); each leaves the database consistent on its own, so a kill between two calls loses
nothing.

- **Claim**: a worker first gets back its own round that was claimed and neither finished nor
  failed (a crash mid-round), with the same trajectories in the same order; only when it has none
  does it claim the oldest unconsumed trajectories as a new round. The claim is one write
  transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: the writers' row lock, oel.online.pg): two
  claimers never share a trajectory, and a round is never run on two batches.
- **Fail**: the round's trajectories return to the pool for a later round, since most failures
  (an exception, a non-finite loss) say nothing about the data; a trajectory that was in
  `max_failed_rounds` failed rounds stays out of the pool (`held`), so one poisonous trajectory
  cannot fail every round after it. The failed round keeps its number and its list of ids.
- **Retention**: the trajectories of done rounds are deleted with their sessions and exchanges
  (the user's conversations); a round's row keeps only the ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from oel.errors import ConflictError, NotFoundError

RoundStatus = Literal["started", "done", "failed"]


@dataclass(frozen=True)
class Round:
    """A learning round: its number, who claimed it, its status, and the trajectories it learns from."""

    number: int
    worker: str
    status: RoundStatus
    trajectory_ids: tuple[str, ...]
    resumed: bool = False
    """True when claim_round handed back a round this worker had already claimed (a restart)."""


@dataclass(frozen=True)
class Deleted:
    """What a retention pass removed."""

    trajectories: int = 0
    sessions: int = 0
    exchanges: int = 0


def bump(conn: Any, name: str, by: int = 1) -> None:
    """Add to an operator counter, in the caller's transaction."""
    conn.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                 "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value", (name, by))


def _round_from_row(row: tuple, *, resumed: bool = False) -> Round:
    number, worker, status, ids = row
    return Round(number, worker, status, tuple(json.loads(ids)), resumed)


def load(conn: Any, number: int) -> Round:
    row = conn.execute("SELECT number, worker, status, trajectory_ids FROM rounds WHERE number = ?",
                       (number,)).fetchone()
    if row is None:
        raise NotFoundError(f"round {number} not found")
    return _round_from_row(row)


def pool_count(conn: Any, max_failed_rounds: int) -> int:
    """Trajectories a new round may claim."""
    return conn.execute("SELECT count(*) FROM trajectories WHERE consumed_by_round IS NULL AND failed_rounds < ?",
                        (max_failed_rounds,)).fetchone()[0]


def claim(conn: Any, *, min_trajectories: int, max_trajectories: int | None, worker: str,
          max_failed_rounds: int, now: float) -> Round | None:
    """The worker's unfinished round, else a new round of the oldest pool trajectories, else None."""
    row = conn.execute("SELECT number, worker, status, trajectory_ids FROM rounds "
                       "WHERE status = 'started' AND worker = ? ORDER BY number LIMIT 1", (worker,)).fetchone()
    if row is not None:
        return _round_from_row(row, resumed=True)
    pool = "SELECT id FROM trajectories WHERE consumed_by_round IS NULL AND failed_rounds < ? ORDER BY seq"
    ids = [r[0] for r in (conn.execute(pool, (max_failed_rounds,)) if max_trajectories is None
                          else conn.execute(pool + " LIMIT ?", (max_failed_rounds, max_trajectories)))]
    if len(ids) < min_trajectories:
        return None
    number = conn.execute("SELECT coalesce(max(number) + 1, 0) FROM rounds").fetchone()[0]
    conn.execute("INSERT INTO rounds (number, worker, status, trajectory_ids, created) VALUES (?, ?, 'started', ?, ?)",
                 (number, worker, json.dumps(ids), now))
    conn.execute("UPDATE trajectories SET consumed_by_round = ? WHERE id IN (SELECT value FROM json_each(?))",
                 (number, json.dumps(ids)))
    return Round(number, worker, "started", tuple(ids))


def _settle(conn: Any, number: int, status: RoundStatus, now: float) -> bool:
    """Mark a started round `status`; False when it already has that status (a retry changes nothing)."""
    current = load(conn, number).status
    if current == status:
        return False
    if current != "started":
        raise ConflictError(f"round {number} is {current}, it cannot become {status}")
    conn.execute("UPDATE rounds SET status = ?, finished = ? WHERE number = ?", (status, now, number))
    return True


def finish(conn: Any, number: int, now: float) -> Round:
    """The round is done: its trajectories stay consumed by it."""
    _settle(conn, number, "done", now)
    return load(conn, number)


def fail(conn: Any, number: int, now: float) -> Round:
    """The round failed: its trajectories return to the pool, each one failed round closer to being held."""
    if _settle(conn, number, "failed", now):
        conn.execute("UPDATE trajectories SET consumed_by_round = NULL, failed_rounds = failed_rounds + 1 "
                     "WHERE consumed_by_round = ?", (number,))
    return load(conn, number)


def delete_done(conn: Any, *, before_round: int | None = None, only_round: int | None = None) -> Deleted:
    """Delete the trajectories of done rounds (numbered below `before_round`, or `only_round`), their
    sessions and exchanges."""
    if only_round is not None:
        where, arg = "r.number = ?", only_round
    else:
        where, arg = "r.number < ?", before_round
    rows = conn.execute("SELECT t.seq, t.session FROM trajectories t JOIN rounds r ON r.number = t.consumed_by_round "
                        f"WHERE r.status = 'done' AND {where}", (arg,)).fetchall()
    seqs = json.dumps([seq for seq, _ in rows])
    sessions = json.dumps([s for _, s in rows if s is not None])
    exchanges = conn.execute("SELECT count(*) FROM exchanges WHERE session IN (SELECT value FROM json_each(?))",
                             (sessions,)).fetchone()[0]
    conn.execute("DELETE FROM trajectories WHERE seq IN (SELECT value FROM json_each(?))", (seqs,))
    gone = conn.execute("DELETE FROM sessions WHERE id IN (SELECT value FROM json_each(?))", (sessions,)).rowcount
    deleted = Deleted(trajectories=len(rows), sessions=gone, exchanges=exchanges)
    for name, value in (("trajectories_deleted", deleted.trajectories), ("exchanges_deleted", deleted.exchanges)):
        bump(conn, name, value)
    return deleted
