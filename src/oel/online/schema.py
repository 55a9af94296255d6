"""The online store's SQLite file: connection settings, tables, schema version.

Durability: WAL journal with synchronous=FULL, so a COMMIT has been fsynced to the WAL before it
returns; the gateway acknowledges a request only after its COMMIT. Every write transaction is
BEGIN IMMEDIATE, so it holds the database's single write lock from its first read: a
read-then-write (claim a batch, check an idempotency key) can never interleave with another
writer, in this process or another one.

The schema version is SQLite's `user_version` header field, written in the same transaction as
the tables: a file is either empty, or complete at a version. A file of an older version is
upgraded when opened, in one transaction (UPGRADES).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from oel.errors import DataError

STORE_SCHEMA_VERSION = 2
"""The layout below; a file with a higher version was written by a newer oel and is refused."""
EXCHANGE_COMPLETE = "complete INTEGER NOT NULL DEFAULT 1 CHECK (complete IN (0, 1))"
"""0: the client was lost before it had the whole answer (it disconnected or stopped reading); the
response is what it was sent."""
UPGRADES = {1: (f"ALTER TABLE exchanges ADD COLUMN {EXCHANGE_COMPLETE}",)}
"""Statements taking a store from version v to v + 1 (the same SQL on both databases)."""
BUSY_TIMEOUT_S = 30.0
"""How long a writer waits for another process's write lock before failing (SQLite's busy timeout)."""

TABLES = (
    # One row per conversation: named by the client (its session id), or stitched ('auto-<id>').
    # `passed` is NULL when the client reported none; only evaluation may read it.
    """CREATE TABLE sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        client TEXT NOT NULL,
        name TEXT,
        auto INTEGER NOT NULL CHECK (auto IN (0, 1)),
        status TEXT NOT NULL CHECK (status IN ('open', 'ended')),
        outcome TEXT,
        passed INTEGER CHECK (passed IN (0, 1)),
        env_id TEXT,
        trajectory TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        last_exchange INTEGER,
        UNIQUE (client, name))""",
    # One row per chat request served. `tail_key` = key of messages + response (oel.sessions).
    f"""CREATE TABLE exchanges (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session INTEGER NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        client TEXT NOT NULL,
        messages TEXT NOT NULL,
        response TEXT NOT NULL,
        model_id TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        response_tokens INTEGER NOT NULL,
        tail_key TEXT NOT NULL,
        created REAL NOT NULL,
        {EXCHANGE_COMPLETE})""",
    "CREATE INDEX exchanges_by_session ON exchanges (session, id)",
    "CREATE INDEX exchanges_by_tail ON exchanges (client, tail_key)",
    # A learning round and the trajectories it claimed (a JSON list of ids, in claim order).
    """CREATE TABLE rounds (
        number INTEGER PRIMARY KEY,
        worker TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('started', 'done', 'failed')),
        trajectory_ids TEXT NOT NULL,
        created REAL NOT NULL,
        finished REAL)""",
    # `body` is the trajectory in the exact oel.trajectory schema, its id = `id`.
    # `consumed_by_round`: NULL = in the pool; `failed_rounds`: how many failed rounds it was in.
    """CREATE TABLE trajectories (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT UNIQUE,
        body TEXT NOT NULL,
        origin TEXT NOT NULL CHECK (origin IN ('session', 'post')),
        session INTEGER REFERENCES sessions (id) ON DELETE SET NULL,
        client TEXT NOT NULL,
        created REAL NOT NULL,
        consumed_by_round INTEGER REFERENCES rounds (number),
        failed_rounds INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX trajectories_pool ON trajectories (seq) WHERE consumed_by_round IS NULL",
    "CREATE INDEX trajectories_by_round ON trajectories (consumed_by_round)",
    # A client's idempotency key -> the trajectory its first request stored. Kept when retention
    # deletes the trajectory (it holds a hash, no conversation), so a late retry still stores nothing.
    """CREATE TABLE idempotency (
        client TEXT NOT NULL,
        key TEXT NOT NULL,
        body_sha256 TEXT NOT NULL,
        trajectory TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (client, key))""",
    # Monotonic operator counters (received, rejected, duplicates, ...), updated in the same
    # transaction as what they count.
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


def connect(path: str | os.PathLike) -> sqlite3.Connection:
    """A connection in autocommit mode (we BEGIN ourselves), WAL + synchronous=FULL + foreign keys."""
    try:
        conn = sqlite3.connect(os.fspath(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise DataError(f"{path}: cannot open the store ({e})") from None
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise DataError(f"{path}: the store needs SQLite's WAL journal, this file allows only '{mode}'")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as e:
        conn.close()
        raise DataError(f"{path}: cannot open the store ({e})") from None
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection, *, write: bool = True) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE (writes) or BEGIN (a consistent read snapshot) ... COMMIT, ROLLBACK on any error."""
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _user_tables(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM sqlite_master "
                        "WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").fetchone()[0]


def ensure_schema(conn: sqlite3.Connection, path: str | os.PathLike) -> None:
    """Create the tables in a new file; refuse a file of a newer version or one that is not a store."""
    with transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > STORE_SCHEMA_VERSION:
            raise DataError(f"{path}: store schema version {version} is newer than this oel reads "
                            f"({STORE_SCHEMA_VERSION}); upgrade oel")
        if version == STORE_SCHEMA_VERSION:
            return
        if version == 0 and _user_tables(conn):
            raise DataError(f"{path}: not an oel online store (it has tables but no store schema version)")
        for statement in (TABLES if version == 0 else upgrade_statements(version)):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {STORE_SCHEMA_VERSION}")


def upgrade_statements(version: int) -> list[str]:
    """The statements that take a store of `version` to STORE_SCHEMA_VERSION."""
    return [statement for v in range(version, STORE_SCHEMA_VERSION) for statement in UPGRADES[v]]
