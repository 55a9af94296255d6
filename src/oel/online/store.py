"""The online mode's durable store: exchanges, sessions, trajectories, rounds, in SQLite or PostgreSQL.

`Store.open(path)` opens the embedded default, one SQLite file (oel.online.schema);
`Store.open("postgresql://...")` a PostgreSQL database that gateways and schedulers on several
hosts share (oel.online.pg). Both run the same SQL (oel.online.intake, oel.online.rounds) and give
the same guarantees; the paragraphs below describe SQLite, oel.online.pg says how PostgreSQL
orders its writers.

The gateway records every chat exchange and every posted trajectory here and acknowledges the
request after the call returns; the scheduler claims rounds of complete trajectories and exports
them as the trajectory JSONL the batch stages read. Several processes may open the same file (a
gateway, a scheduler, `oel online export`): SQLite's file locks order their writes.

Threads: one connection per Store, behind one lock. SQLite admits one writer at a time per
database whatever the number of connections, and every write here is a short transaction ending
in an fsync, so per-thread connections would only add concurrent small reads -- and a
thread-per-request HTTP server would open a connection per request. Bulk reads (export, a
round's trajectories) use a connection of their own, so a large export never holds the lock
that acknowledgements wait for.

Retention: `keep` (default) keeps everything; `delete_after_consolidation` deletes a round's
trajectories, sessions and exchanges when the round is finished; `delete_consumed(before_round)`
does the same for earlier done rounds on demand.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from oel.errors import ConfigError, DataError
from oel.io import PRIVATE_FILE_MODE, make_dirs
from oel.online import intake, pg, rounds, schema
from oel.online.intake import Added, Recorded
from oel.online.rounds import Deleted, Round, bump
from oel.sessions import (AUTO_SESSION_PREFIX, MAX_NAME_CHARS, ONLINE_ENV_ID, STITCHED_SOURCE, Exchange,
                          parse_messages)
from oel.trajectory import Message, Trajectory, parse_trajectory, write_trajectories

Retention = Literal["keep", "delete_after_consolidation"]
RETENTION_POLICIES = ("keep", "delete_after_consolidation")
MAX_FAILED_ROUNDS = 3
"""A trajectory in this many failed rounds is held out of the pool (see oel.online.rounds)."""
IDLE_OUTCOME = "unknown: the session ended idle, without an outcome"
DEFAULT_WORKER = "scheduler"
COUNTERS = ("trajectories_stored", "trajectories_duplicate", "trajectories_rejected",
            "exchanges_recorded", "exchanges_rejected", "exchanges_incomplete", "trajectories_deleted",
            "exchanges_deleted")

_IN_ROUNDS = "SELECT count(*) FROM trajectories t JOIN rounds r ON r.number = t.consumed_by_round WHERE r.status = "
GAUGES_SQL = {
    "trajectories_claimed": _IN_ROUNDS + "'started'",
    "trajectories_consumed": _IN_ROUNDS + "'done'",
    "exchanges": "SELECT count(*) FROM exchanges",
    "sessions_open": "SELECT count(*) FROM sessions WHERE status = 'open'",
}
HELD_SQL = "SELECT count(*) FROM trajectories WHERE consumed_by_round IS NULL AND failed_rounds >= ?"


def _check_name(field: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
        raise DataError(f"{field}: expected a non-empty string of at most {MAX_NAME_CHARS} characters, got "
                        f"{value!r:.80}")
    return value


def _check_count(field: str, value: object, *, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ConfigError(f"{field}: expected an integer >= {least}, got {value!r}")
    return value


def _validated_post(trajectory: Trajectory | Mapping[str, Any]) -> Trajectory:
    """A posted trajectory, validated. One that does not say its `source` arrived through the
    gateway: it is `online`, not the schema's default `collect` (which claims `oel collect` played a
    grid game, and makes extraction read a deployment's task with the games' words)."""
    if isinstance(trajectory, Trajectory):
        traj = trajectory
    else:
        if isinstance(trajectory, Mapping) and "source" not in trajectory:
            trajectory = {**trajectory, "source": STITCHED_SOURCE}
        try:
            traj = parse_trajectory(trajectory)  # type: ignore[arg-type]
        except ValueError as e:
            raise DataError(f"trajectory: {' '.join(str(e).split())}") from None
    if "online" in traj.meta:
        raise DataError("trajectory: meta.online: reserved for the store's own record")
    return traj


class Store:
    """The durable store of the online mode; open with `Store.open(path)`, close (or `with`) when done."""

    def __init__(self, path: Path | str, conn: Any, *, retention: Retention, max_failed_rounds: int,
                 clock: Callable[[], float]) -> None:
        self.path = path
        """The SQLite file, or the PostgreSQL URL (what `Store.open` was given)."""
        self.backend = "postgresql" if isinstance(path, str) else "sqlite"
        self._connect: Callable[[], Any] = (lambda: pg.connect(path)) if isinstance(path, str) else (
            lambda: schema.connect(path))
        self._tx = pg.transaction if isinstance(path, str) else schema.transaction
        self.retention = retention
        self.max_failed_rounds = max_failed_rounds
        self._conn = conn
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike, *, retention: Retention = "keep",
             max_failed_rounds: int = MAX_FAILED_ROUNDS, clock: Callable[[], float] = time.time) -> Store:
        """Open (creating if new) the store at `path` (a SQLite file) or a `postgresql://` URL; refuses a
        newer schema, or a file / database that is no store."""
        if retention not in RETENTION_POLICIES:
            raise ConfigError(f"retention: expected one of {', '.join(RETENTION_POLICIES)}, got {retention!r}")
        _check_count("max_failed_rounds", max_failed_rounds, least=1)
        if pg.is_url(path):
            url = str(path)
            conn = pg.connect(url)
            init: Callable[[], None] = lambda: pg.ensure_schema(conn)  # noqa: E731
            where: Path | str = url
        else:
            where = Path(path)
            _create_private(where)
            conn = schema.connect(where)
            init = lambda: schema.ensure_schema(conn, where)  # noqa: E731
        try:
            init()
        except BaseException:
            conn.close()
            raise
        return cls(where, conn, retention=retention, max_failed_rounds=max_failed_rounds, clock=clock)

    @property
    def location(self) -> str:
        """Where the store is, for messages: the file, or the URL without its password."""
        return pg.redact(self.path) if isinstance(self.path, str) else str(self.path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._lock, self._tx(self._conn) as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Any]:
        """A consistent read on the shared connection (short ones: a count, a round's row)."""
        with self._lock, self._tx(self._conn, write=False) as conn:
            yield conn

    @contextmanager
    def _snapshot(self) -> Iterator[Any]:
        """A consistent read on a connection of its own (readers never block the writer)."""
        conn = self._connect()
        try:
            with self._tx(conn, write=False):
                yield conn
        finally:
            conn.close()

    @contextmanager
    def _counting_rejections(self, counter: str) -> Iterator[None]:
        """A refused request is counted, in a transaction of its own (the request's own was rolled back)."""
        try:
            yield
        except DataError:
            with self._write() as conn:
                bump(conn, counter)
            raise

    # ---- recording: exchanges, sessions, posted trajectories ---------------------------------

    def record_exchange(self, client: str, messages: Iterable[Message | Mapping[str, Any]], response: str, *,
                        session_id: str | None = None, model_id: str = "unknown", prompt_tokens: int = 0,
                        response_tokens: int = 0, complete: bool = True) -> Recorded:
        """Record one chat request and its response, durably; without `session_id` it is stitched by prefix.
        `complete` False: the client was lost before it had the whole answer; `response` is what it was sent."""
        with self._counting_rejections("exchanges_rejected"):
            _check_name("client", client)
            if session_id is not None and (_check_name("session_id", session_id).startswith(AUTO_SESSION_PREFIX)):
                raise DataError(f"session_id: names starting with '{AUTO_SESSION_PREFIX}' are reserved for "
                                "stitched sessions")
            if not isinstance(response, str):
                raise DataError(f"response: expected a string, got {type(response).__name__}")
            for field, n in (("prompt_tokens", prompt_tokens), ("response_tokens", response_tokens)):
                if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                    raise DataError(f"{field}: expected an integer >= 0, got {n!r}")
            try:
                exchange = Exchange(parse_messages(messages), response, str(model_id), prompt_tokens, response_tokens)
            except ValueError as e:
                raise DataError(str(e)) from None
            with self._write() as conn:
                return intake.insert_exchange(conn, client, session_id, exchange, self._clock(),
                                              complete=bool(complete))

    def mark_incomplete(self, exchange_id: int) -> bool:
        """A recorded exchange's client was lost while its answer was being sent (it stopped reading)."""
        with self._write() as conn:
            return intake.mark_incomplete(conn, exchange_id)

    def end_session(self, client: str, session_id: str, outcome: str, passed: bool | None = None, *,
                    env_id: str = ONLINE_ENV_ID) -> Added:
        """Close a session: its exchanges become one stored trajectory. Repeating the same end is a duplicate."""
        with self._counting_rejections("trajectories_rejected"):
            _check_name("client", client)
            _check_name("session_id", session_id)
            _check_name("env_id", env_id)
            if not isinstance(outcome, str):
                raise DataError(f"outcome: expected a string, got {type(outcome).__name__}")
            if passed is not None and not isinstance(passed, bool):
                raise DataError(f"passed: expected true, false or null, got {passed!r}")
            with self._write() as conn:
                return intake.end_session(conn, client, session_id, outcome, passed, env_id, self._clock())

    def close_idle_sessions(self, idle_s: float, *, outcome: str = IDLE_OUTCOME) -> list[str]:
        """End every open session with no exchange for `idle_s` seconds (agents that never call end)."""
        if not isinstance(idle_s, (int, float)) or idle_s < 0:
            raise ConfigError(f"idle_s: expected a number of seconds >= 0, got {idle_s!r}")
        with self._write() as conn:
            now = self._clock()
            return [intake.store_session(conn, session, outcome, None, ONLINE_ENV_ID, now)
                    for session in intake.idle_sessions(conn, now - idle_s)]

    def add_trajectory(self, client: str, trajectory: Trajectory | Mapping[str, Any], *,
                       idempotency_key: str | None = None) -> Added:
        """Store a posted trajectory durably; a retry with the same key and body returns the first result."""
        with self._counting_rejections("trajectories_rejected"):
            _check_name("client", client)
            if idempotency_key is not None:
                _check_name("idempotency_key", idempotency_key)
            traj = _validated_post(trajectory)
            with self._write() as conn:
                return intake.add_post(conn, client, traj, idempotency_key, self._clock())

    # ---- learning rounds -------------------------------------------------------------------

    def count_unconsumed(self) -> int:
        """Complete trajectories no round has claimed yet (held ones excluded)."""
        with self._read() as conn:
            return rounds.pool_count(conn, self.max_failed_rounds)

    def claim_round(self, min_trajectories: int, *, max_trajectories: int | None = None,
                    worker: str = DEFAULT_WORKER) -> Round | None:
        """The worker's unfinished round (resumed, same ids), else a new round of the oldest
        unconsumed trajectories (at most `max_trajectories`) when there are `min_trajectories`, else None."""
        _check_count("min_trajectories", min_trajectories, least=1)
        if max_trajectories is not None:
            _check_count("max_trajectories", max_trajectories, least=min_trajectories)
        _check_name("worker", worker)
        with self._write() as conn:
            return rounds.claim(conn, min_trajectories=min_trajectories, max_trajectories=max_trajectories,
                                worker=worker, max_failed_rounds=self.max_failed_rounds, now=self._clock())

    def round(self, number: int) -> Round:
        with self._read() as conn:
            return rounds.load(conn, number)

    def finish_round(self, number: int) -> Round:
        """The round's model is published; with delete_after_consolidation its conversations go now."""
        with self._write() as conn:
            done = rounds.finish(conn, number, self._clock())
            if self.retention == "delete_after_consolidation":
                rounds.delete_done(conn, only_round=number)
            return done

    def fail_round(self, number: int) -> Round:
        """The round published nothing: its trajectories return to the pool (see oel.online.rounds)."""
        with self._write() as conn:
            return rounds.fail(conn, number, self._clock())

    def delete_consumed(self, before_round: int) -> Deleted:
        """Retention: delete the trajectories, sessions and exchanges of done rounds numbered below `before_round`."""
        _check_count("before_round", before_round, least=0)
        with self._write() as conn:
            return rounds.delete_done(conn, before_round=before_round)

    # ---- reading: trajectories, export, metrics ---------------------------------------------

    def trajectories(self, *, round: int | None = None) -> list[Trajectory]:
        """Every stored trajectory in arrival order, or one round's in its claim order."""
        with self._snapshot() as conn:
            if round is None:
                bodies = [r[0] for r in conn.execute("SELECT body FROM trajectories ORDER BY seq")]
            else:
                bodies = self._round_bodies(conn, round)
        return [self._parse_body(body) for body in bodies]

    def _round_bodies(self, conn: Any, number: int) -> list[str]:
        ids = rounds.load(conn, number).trajectory_ids
        found = dict(conn.execute("SELECT id, body FROM trajectories WHERE id IN (SELECT value FROM json_each(?))",
                                  (json.dumps(ids),)).fetchall())
        missing = [i for i in ids if i not in found]
        if missing:
            raise DataError(f"round {number}: {len(missing)} of its {len(ids)} trajectories were deleted by retention")
        return [found[i] for i in ids]

    def _parse_body(self, body: str) -> Trajectory:
        try:
            return parse_trajectory(json.loads(body))
        except ValueError as e:
            raise DataError(f"{self.location}: a stored trajectory does not validate ({e})") from None

    def export_jsonl(self, path: str | os.PathLike, *, round: int | None = None) -> int:
        """Write the trajectories (all, or one round's) as trajectory JSONL, atomically; returns how many."""
        trajs = self.trajectories(round=round)
        write_trajectories(path, trajs, private=True)  # users' conversations: 0600
        return len(trajs)

    def stats(self) -> dict[str, int]:
        """Operator numbers: monotonic counters (received = stored + duplicate + rejected) and current counts."""
        with self._read() as conn:
            out = dict.fromkeys(COUNTERS, 0) | dict(conn.execute("SELECT name, value FROM counters").fetchall())
            out["trajectories_received"] = sum(out[f"trajectories_{k}"] for k in ("stored", "duplicate", "rejected"))
            out["trajectories_unconsumed"] = rounds.pool_count(conn, self.max_failed_rounds)
            out["trajectories_held"] = conn.execute(HELD_SQL, (self.max_failed_rounds,)).fetchone()[0]
            for name, sql in GAUGES_SQL.items():
                out[name] = conn.execute(sql).fetchone()[0]
            for status in ("started", "done", "failed"):
                out[f"rounds_{status}"] = conn.execute("SELECT count(*) FROM rounds WHERE status = ?",
                                                       (status,)).fetchone()[0]
            return out


def _create_private(path: Path) -> None:
    """Create a new store file 0600 (its folders 0700) before SQLite opens it: it holds users'
    conversations, and SQLite would create it (and its -wal/-shm, which copy the file's mode)
    readable by everyone under the usual umask 022. An existing file is left as it is."""
    make_dirs(path.parent, private=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    except FileExistsError:
        pass
    except OSError as e:
        raise DataError(f"{path}: cannot create the store ({e.strerror})") from None
