"""What arrives at the store: exchanges into sessions, ended sessions and posted trajectories into rows.

Functions over a connection inside the Store's write transaction, on inputs the Store has
validated; the SQL is the dialect SQLite and PostgreSQL share (oel.online.pg runs it there).
Each stored trajectory gets the id `online-<n>` (n never reused: AUTOINCREMENT), so ids stay
unique in every export even when two clients post the same id; a posted trajectory keeps its own
id as `meta.online.posted_id`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from oel.errors import ConflictError, NotFoundError
from oel.online.rounds import bump
from oel.sessions import (
    AUTO_SESSION_PREFIX,
    Candidate,
    Exchange,
    build_trajectory,
    choose_conversation,
    prefix_keys,
    tail_key,
)
from oel.trajectory import Message, Trajectory

TRAJECTORY_ID_PREFIX = "online-"


@dataclass(frozen=True)
class Recorded:
    """A recorded exchange: the session it belongs to (the client's id, or the stitched `auto-<n>`)."""

    session_id: str
    exchange_id: int


@dataclass(frozen=True)
class Added:
    """A stored trajectory's id; `duplicate`: an idempotent retry, nothing new was stored."""

    trajectory_id: str
    duplicate: bool = False


def body_sha256(traj: Trajectory) -> str:
    """The idempotency fingerprint: the validated trajectory, so key order or spelt-out defaults do not matter."""
    canonical = json.dumps(traj.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ---- exchanges ------------------------------------------------------------------------------


def insert_exchange(conn: Any, client: str, name: str | None, ex: Exchange, now: float,
                    complete: bool = True) -> Recorded:
    """Append `ex` to the client's session `name`, or to the stitched session it continues.
    `complete` False: the client was lost before it had the whole answer (see mark_incomplete)."""
    session, name = _named_session(conn, client, name, now) if name else _stitched_session(conn, client, ex, now)
    messages = json.dumps([m.model_dump() for m in ex.messages], ensure_ascii=False)
    exchange_id = conn.execute(
        "INSERT INTO exchanges (session, client, messages, response, model_id, prompt_tokens, response_tokens, "
        "tail_key, created, complete) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (session, client, messages, ex.response, ex.model_id, ex.prompt_tokens, ex.response_tokens, tail_key(ex),
         now, int(complete))).fetchone()[0]
    conn.execute("UPDATE sessions SET last_exchange = ?, updated = ? WHERE id = ?", (exchange_id, now, session))
    bump(conn, "exchanges_recorded")
    if not complete:
        bump(conn, "exchanges_incomplete")
    return Recorded(name, exchange_id)


def mark_incomplete(conn: Any, exchange_id: int) -> bool:
    """A recorded exchange's client was lost while its answer was being sent; False if already marked
    or gone (retention)."""
    changed = conn.execute("UPDATE exchanges SET complete = 0 WHERE id = ? AND complete = 1 RETURNING id",
                           (exchange_id,)).fetchone()
    if changed is not None:
        bump(conn, "exchanges_incomplete")
    return changed is not None


def _named_session(conn: Any, client: str, name: str, now: float) -> tuple[int, str]:
    row = conn.execute("SELECT id, status FROM sessions WHERE client = ? AND name = ?", (client, name)).fetchone()
    if row is None:
        session = conn.execute("INSERT INTO sessions (client, name, auto, status, created, updated) "
                               "VALUES (?, ?, 0, 'open', ?, ?) RETURNING id", (client, name, now, now)).fetchone()[0]
        return session, name
    if row[1] != "open":
        raise ConflictError(f"session_id: session '{name}' has ended; a new conversation needs a new session id")
    return row[0], name


def _stitched_session(conn: Any, client: str, ex: Exchange, now: float) -> tuple[int, str]:
    """The client's open stitched session `ex` continues (sessions.choose_conversation), or a new one."""
    keys = prefix_keys(ex.messages)
    rows = conn.execute(
        "SELECT e.session, e.tail_key, e.id = s.last_exchange FROM exchanges e JOIN sessions s ON s.id = e.session "
        "WHERE e.client = ? AND s.auto = 1 AND s.status = 'open' AND e.tail_key IN (SELECT value FROM json_each(?))",
        (client, json.dumps(keys))).fetchall() if keys else []
    session = choose_conversation(keys, [Candidate(s, key, bool(latest)) for s, key, latest in rows])
    if session is not None:
        return session, f"{AUTO_SESSION_PREFIX}{session}"
    session = conn.execute("INSERT INTO sessions (client, auto, status, created, updated) "
                           "VALUES (?, 1, 'open', ?, ?) RETURNING id", (client, now, now)).fetchone()[0]
    name = f"{AUTO_SESSION_PREFIX}{session}"
    conn.execute("UPDATE sessions SET name = ? WHERE id = ?", (name, session))
    return session, name


# ---- ending sessions ------------------------------------------------------------------------


def end_session(conn: Any, client: str, name: str, outcome: str, passed: bool | None, env_id: str,
                now: float) -> Added:
    """Store the session's trajectory; the same end again is a duplicate, a different one a conflict."""
    row = conn.execute("SELECT id, status, outcome, passed, env_id, trajectory FROM sessions "
                       "WHERE client = ? AND name = ?", (client, name)).fetchone()
    if row is None:
        raise NotFoundError(f"session_id: no session '{name}' of client '{client}'")
    session, status, *ended, trajectory = row
    if status == "open":
        return Added(store_session(conn, session, outcome, passed, env_id, now))
    if ended != [outcome, None if passed is None else int(passed), env_id]:
        raise ConflictError(f"session_id: session '{name}' already ended with another outcome")
    bump(conn, "trajectories_duplicate")
    return Added(trajectory, duplicate=True)


def _exchange_from_row(row: tuple) -> Exchange:
    messages, response, model_id, prompt_tokens, response_tokens = row
    return Exchange(tuple(Message.model_validate(m) for m in json.loads(messages)), response, model_id,
                    prompt_tokens, response_tokens)


def store_session(conn: Any, session: int, outcome: str, passed: bool | None, env_id: str,
                  now: float) -> str:
    """Build the open session's trajectory from its exchanges, store it, mark the session ended."""
    client, name, auto = conn.execute("SELECT client, name, auto FROM sessions WHERE id = ?", (session,)).fetchone()
    rows = conn.execute("SELECT messages, response, model_id, prompt_tokens, response_tokens, complete FROM exchanges "
                        "WHERE session = ? ORDER BY id", (session,)).fetchall()
    exchanges = [_exchange_from_row(r[:-1]) for r in rows]
    seq, trajectory_id = _new_trajectory_row(conn, "session", session, client, now)
    traj = build_trajectory(exchanges, trajectory_id=trajectory_id, outcome=outcome, passed=passed, env_id=env_id,
                            seed=seq, meta={"origin": "session", "client": client, "session": name,
                                            "stitched": bool(auto),
                                            "incomplete_exchanges": sum(1 for r in rows if not r[-1])})
    _write_body(conn, seq, traj)
    conn.execute("UPDATE sessions SET status = 'ended', outcome = ?, passed = ?, env_id = ?, trajectory = ?, "
                 "updated = ? WHERE id = ?",
                 (outcome, None if passed is None else int(passed), env_id, trajectory_id, now, session))
    bump(conn, "trajectories_stored")
    return trajectory_id


def idle_sessions(conn: Any, cutoff: float) -> list[int]:
    """Open sessions whose last exchange is older than `cutoff`, oldest first."""
    return [r[0] for r in conn.execute("SELECT id FROM sessions WHERE status = 'open' AND updated < ? ORDER BY id",
                                       (cutoff,))]


# ---- posted trajectories --------------------------------------------------------------------


def add_post(conn: Any, client: str, traj: Trajectory, key: str | None, now: float) -> Added:
    """Store a posted trajectory once per idempotency key: a retry gets the first id, another body a conflict."""
    digest = body_sha256(traj)
    if key is not None:
        row = conn.execute("SELECT body_sha256, trajectory FROM idempotency WHERE client = ? AND key = ?",
                           (client, key)).fetchone()
        if row is not None and row[0] != digest:
            raise ConflictError(f"idempotency_key: '{key}' was used for a different trajectory")
        if row is not None:
            bump(conn, "trajectories_duplicate")
            return Added(row[1], duplicate=True)
    seq, trajectory_id = _new_trajectory_row(conn, "post", None, client, now)
    meta = {**traj.meta, "online": {"origin": "post", "client": client, "posted_id": traj.id}}
    _write_body(conn, seq, traj.model_copy(update={"id": trajectory_id, "meta": meta}))
    if key is not None:
        conn.execute("INSERT INTO idempotency (client, key, body_sha256, trajectory, created) VALUES (?, ?, ?, ?, ?)",
                     (client, key, digest, trajectory_id, now))
    bump(conn, "trajectories_stored")
    return Added(trajectory_id)


def _new_trajectory_row(conn: Any, origin: str, session: int | None, client: str,
                        now: float) -> tuple[int, str]:
    """Reserve a row; its number names the trajectory."""
    seq = conn.execute("INSERT INTO trajectories (body, origin, session, client, created) VALUES ('', ?, ?, ?, ?) "
                       "RETURNING seq", (origin, session, client, now)).fetchone()[0]
    return seq, f"{TRAJECTORY_ID_PREFIX}{seq}"


def _write_body(conn: Any, seq: int, traj: Trajectory) -> None:
    body = json.dumps(traj.model_dump(mode="json"), ensure_ascii=False)
    conn.execute("UPDATE trajectories SET id = ?, body = ? WHERE seq = ?", (traj.id, body, seq))
