"""The online store: durability settings, idempotency, sessions, rounds, export, retention.

The tests that take `store` or `store_url` run twice, on a SQLite file and on a PostgreSQL
database (a throwaway cluster, tests/pg_server.py); those about the file itself are SQLite's.
Crash safety (SIGKILL of a writing process) is in test_online_store_crash.py.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path

import pytest

from oel.errors import ConfigError, DataError
from oel.online import Added, ConflictError, NotFoundError, Store
from oel.online import pg, schema
from oel.online.schema import EXCHANGE_COMPLETE, STORE_SCHEMA_VERSION, connect
from oel.sessions import Exchange, stitch
from oel.trajectory import Message, Trajectory, Turn

CLAIM_THREADS = 8


def traj(i: int, *, outcome: str = "success") -> Trajectory:
    prompt = [Message(role="user", content=f"board {i}")]
    return Trajectory(id=f"t{i}", env_id="E", seed=i, model_id="m", outcome=outcome, passed=True,
                      turns=[Turn(prompt=prompt, observation=f"board {i}", response="[right]", feedback="moved")])


@pytest.fixture
def store(store_url: str) -> Store:
    s = Store.open(store_url)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "online.db")
    yield s
    s.close()


def rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# ---- the file ----------------------------------------------------------------------------------


def test_wal_and_synchronous_full(sqlite_store: Store) -> None:
    conn = connect(sqlite_store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA user_version").fetchone()[0] == STORE_SCHEMA_VERSION
    conn.close()


def test_newer_schema_and_foreign_files_are_refused(tmp_path: Path) -> None:
    Store.open(tmp_path / "s.db").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute(f"PRAGMA user_version = {STORE_SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(DataError, match=f"store schema version {STORE_SCHEMA_VERSION + 1} is newer") as e:
        Store.open(tmp_path / "s.db")
    assert "\n" not in str(e.value)
    conn = sqlite3.connect(tmp_path / "other.db")
    conn.execute("CREATE TABLE mine (x)")
    conn.close()
    with pytest.raises(DataError, match="not an oel online store"):
        Store.open(tmp_path / "other.db")
    (tmp_path / "text.db").write_text("not a database, just text that is long enough to have a header " * 4)
    with pytest.raises(DataError, match=r"text.db: cannot open the store \(file is not a database\)$"):
        Store.open(tmp_path / "text.db")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(DataError, match="dir.db: cannot open the store"):
        Store.open(tmp_path / "dir.db")
    with pytest.raises(ConfigError, match="^retention: expected one of keep, delete_after_consolidation"):
        Store.open(tmp_path / "x.db", retention="forever")  # type: ignore[arg-type]


# ---- posted trajectories -------------------------------------------------------------------------


def test_idempotent_retry_returns_the_same_id_and_stores_once(store: Store, tmp_path: Path) -> None:
    first = store.add_trajectory("c", traj(0), idempotency_key="k")
    again = store.add_trajectory("c", traj(0).model_dump(mode="json"), idempotency_key="k")
    assert (again.trajectory_id, again.duplicate, first.duplicate) == (first.trajectory_id, True, False)
    with Store.open(store.path) as reopened:  # a retry after a gateway restart
        assert reopened.add_trajectory("c", traj(0), idempotency_key="k") == again
    other_client = store.add_trajectory("d", traj(0), idempotency_key="k")
    assert not other_client.duplicate
    assert len(store.trajectories()) == 2
    stats = store.stats()
    assert (stats["trajectories_stored"], stats["trajectories_duplicate"], stats["trajectories_received"]) == (2, 2, 4)


def test_same_key_with_another_body_is_a_conflict_and_stores_nothing(store: Store) -> None:
    store.add_trajectory("c", traj(0), idempotency_key="k")
    with pytest.raises(ConflictError, match="^idempotency_key: 'k' was used for a different trajectory$"):
        store.add_trajectory("c", traj(0, outcome="failure"), idempotency_key="k")
    assert [t.outcome for t in store.trajectories()] == ["success"]
    assert store.stats()["trajectories_rejected"] == 1


def test_posted_ids_are_renamed_and_kept_in_meta(store: Store) -> None:
    a = store.add_trajectory("c", traj(0))
    b = store.add_trajectory("d", traj(0))  # the same posted id from another client, no key: two trajectories
    stored = store.trajectories()
    assert [t.id for t in stored] == [a.trajectory_id, b.trajectory_id] == ["online-1", "online-2"]
    assert stored[1].meta["online"] == {"origin": "post", "client": "d", "posted_id": "t0"}
    assert stored[0].model_copy(update={"id": "t0", "meta": {}}) == traj(0)


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("turns"), "turns"),
    (lambda d: d["turns"][0]["prompt"][0].update(role="robot"), r"turns\[0\]\.prompt\[0\]\.role"),
    (lambda d: d.update(seed="seven"), "seed"),
    (lambda d: d.update(meta={"online": 1}), "meta.online"),
])
def test_invalid_trajectory_names_the_field_and_stores_nothing(store: Store, mutate, field: str) -> None:
    body = traj(0).model_dump(mode="json")
    mutate(body)
    with pytest.raises(DataError, match=rf"^trajectory: {field}\b") as e:
        store.add_trajectory("c", body, idempotency_key="k")
    assert "\n" not in str(e.value)
    assert store.trajectories() == []
    assert store.add_trajectory("c", traj(0), idempotency_key="k").duplicate is False  # the key was not taken
    assert store.stats()["trajectories_rejected"] == 1


# ---- exchanges and sessions ---------------------------------------------------------------------


def chat(store: Store, messages: list[Message], response: str, **kw) -> str:
    return store.record_exchange("c", [m.model_dump() for m in messages], response, **kw).session_id


def test_named_session_becomes_one_trajectory(store: Store) -> None:
    m1 = [Message(role="user", content="board 1")]
    chat(store, m1, "[up]", session_id="s1", model_id="v1", prompt_tokens=3, response_tokens=1)
    m2 = [*m1, Message(role="assistant", content="[up]"), Message(role="user", content="board 2")]
    chat(store, m2, "[down]", session_id="s1", model_id="v1")
    added = store.end_session("c", "s1", "reached the goal", passed=True, env_id="frozenlake")
    (t,) = store.trajectories()
    assert t.id == added.trajectory_id and (t.outcome, t.passed, t.env_id, t.model_id) == ("reached the goal", True, "frozenlake", "v1")
    assert [(x.observation, x.response, x.feedback) for x in t.turns] == [("board 1", "[up]", "board 2"), ("board 2", "[down]", "")]
    assert t.meta["online"]["session"] == "s1" and t.meta["online"]["passed_reported"] is True
    assert t.turns[0].prompt_tokens == 3
    assert store.end_session("c", "s1", "reached the goal", passed=True, env_id="frozenlake") == Added(added.trajectory_id, True)
    with pytest.raises(ConflictError, match="already ended with another outcome"):
        store.end_session("c", "s1", "fell in a hole")
    with pytest.raises(ConflictError, match="^session_id: session 's1' has ended"):
        chat(store, m1, "[up]", session_id="s1")
    with pytest.raises(NotFoundError, match="^session_id: no session 's1' of client 'other'$"):
        store.end_session("other", "s1", "x")
    assert len(store.trajectories()) == 1
    stats = store.stats()
    assert (stats["exchanges_recorded"], stats["exchanges_rejected"], stats["sessions_open"]) == (2, 1, 0)


def test_bad_exchange_names_the_field_and_stores_nothing(store: Store) -> None:
    with pytest.raises(DataError, match=r"^messages\[0\]\.role: "):
        store.record_exchange("c", [{"role": "tool", "content": "x"}], "r")
    with pytest.raises(DataError, match="^session_id: names starting with 'auto-' are reserved"):
        store.record_exchange("c", [{"role": "user", "content": "x"}], "r", session_id="auto-1")
    with pytest.raises(DataError, match="^client: expected a non-empty string"):
        store.record_exchange("", [{"role": "user", "content": "x"}], "r")
    assert store.stats()["exchanges"] == 0 and store.stats()["exchanges_rejected"] == 3


def test_store_stitches_like_the_pure_function(store: Store) -> None:
    """Session-less exchanges of two clients, interleaved: each client's sessions are `stitch` of its exchanges."""
    rng = random.Random(5)
    sent: dict[str, list[tuple[Exchange, str]]] = {"a": [], "b": []}
    heads: dict[str, list[list[Message]]] = {c: [[Message(role="user", content="same start")] for _ in range(3)] for c in sent}
    for step in range(40):
        client = rng.choice("ab")
        k = rng.randrange(3)
        exchange = Exchange(tuple(heads[client][k]), rng.choice(["x", "y"]))
        session = store.record_exchange(client, list(exchange.messages), exchange.response).session_id
        sent[client].append((exchange, session))
        heads[client][k] = [*exchange.tail, Message(role="user", content=rng.choice(["f", "g", f"h{step}"]))]
    for client, pairs in sent.items():
        by_session: dict[str, list[int]] = {}
        for i, (_, session) in enumerate(pairs):
            by_session.setdefault(session, []).append(i)
        assert sorted(by_session.values()) == sorted(stitch([e for e, _ in pairs]))


def test_idle_sessions_are_closed_with_an_unknown_outcome(store_url: str) -> None:
    now = [1000.0]
    with Store.open(store_url, clock=lambda: now[0]) as store:
        old = store.record_exchange("c", [{"role": "user", "content": "a"}], "r").session_id
        now[0] += 100
        store.record_exchange("c", [{"role": "user", "content": "b"}], "r", session_id="fresh")
        now[0] += 50
        (closed,) = store.close_idle_sessions(60)
        (t,) = store.trajectories()
        assert t.id == closed and t.meta["online"]["session"] == old and t.outcome.startswith("unknown")
        assert store.stats()["sessions_open"] == 1


def test_concurrent_exchanges_from_many_threads(store: Store) -> None:
    def agent(a: int) -> None:
        msgs = [{"role": "user", "content": f"agent {a} turn 0"}]
        for k in range(5):
            store.record_exchange("c", msgs, f"r{k}", session_id=f"s{a}")
            msgs = [*msgs, {"role": "assistant", "content": f"r{k}"}, {"role": "user", "content": f"turn {k + 1}"}]
        store.end_session("c", f"s{a}", "done")

    threads = [threading.Thread(target=agent, args=(a,)) for a in range(CLAIM_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trajs = store.trajectories()
    assert len(trajs) == CLAIM_THREADS and all(len(t.turns) == 5 for t in trajs)
    if store.backend == "sqlite":
        assert rows(store.path, "PRAGMA integrity_check") == [("ok",)]


def test_conversations_are_private_files(tmp_path: Path) -> None:
    """The store (its -wal too), its exports and new folders are the owner's only, whatever the umask."""
    import os
    import stat

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    old = os.umask(0o022)
    try:
        path = tmp_path / "new" / "dir" / "store.sqlite"
        with Store.open(path) as store:
            store.add_trajectory("alice", {"id": "t1", "env_id": "e", "seed": 0, "model_id": "m", "outcome": "done", "passed": True,
                                           "turns": [{"prompt": [{"role": "user", "content": "hi"}],
                                                      "observation": "hi", "response": "ok"}]})
            out = tmp_path / "exports" / "t.jsonl"
            assert store.export_jsonl(out) == 1
            files = sorted(p.name for p in path.parent.glob("store.sqlite*"))
            assert "store.sqlite-wal" in files and all(mode(path.parent / f) == 0o600 for f in files), files
        assert mode(path) == 0o600 and mode(out) == 0o600
        assert mode(path.parent) == mode(path.parent.parent) == 0o700 and mode(out.parent) == 0o700
    finally:
        os.umask(old)


def test_a_posted_trajectory_without_a_source_is_online_and_read_as_a_task(store_url: str) -> None:
    """Not the schema's default `collect` (a grid game `oel collect` played): extraction of a round of
    posted deployment trajectories must use the task wording, not the games'."""
    from oel.extract.templates import GRID_STYLE, TASK_STYLE, round_style

    body = {"id": "t1", "env_id": "support-desk", "seed": 0, "model_id": "m", "outcome": "solved", "passed": True,
            "turns": [{"prompt": [{"role": "user", "content": "my printer"}], "observation": "my printer",
                       "response": "restart it"}]}
    with Store.open(store_url) as store:
        store.add_trajectory("alice", body)
        store.add_trajectory("alice", {**body, "id": "t2", "source": "collect", "env_id": "FrozenLake-v0-raw"})
        plain, collected = store.trajectories()
    assert (plain.source, collected.source) == ("online", "collect")
    assert round_style([plain]) is TASK_STYLE and round_style([collected]) is GRID_STYLE


# ---- an older store is upgraded in place --------------------------------------------------------

V1_EXCHANGE = ("INSERT INTO sessions (client, name, auto, status, created, updated) VALUES ('c', 's', 0, 'open', 0, 0)",
               "INSERT INTO exchanges (session, client, messages, response, model_id, prompt_tokens, response_tokens, "
               "tail_key, created) VALUES (1, 'c', '[{\"role\": \"user\", \"content\": \"hi\"}]', 'yo', 'm', 1, 1, "
               "'k', 0)")


def v1_tables(tables: tuple[str, ...]) -> list[str]:
    """The version-1 layout: today's, without exchanges.complete."""
    return [t.replace(f",\n        {EXCHANGE_COMPLETE}", "") for t in tables]


def assert_upgraded(store: Store) -> None:
    """The old row reads as complete; a new exchange can be marked incomplete, and is counted."""
    recorded = store.record_exchange("c", [Message(role="user", content="again")], "y", session_id="s")
    assert store.mark_incomplete(recorded.exchange_id) and not store.mark_incomplete(recorded.exchange_id)
    assert store.stats()["exchanges_incomplete"] == 1 and store.stats()["exchanges"] == 2
    store.end_session("c", "s", "done")
    [trajectory] = store.trajectories()
    assert trajectory.meta["online"]["incomplete_exchanges"] == 1 and len(trajectory.turns) == 2


def test_a_version_1_sqlite_store_is_upgraded_in_place(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "v1.db")
    for statement in (*v1_tables(schema.TABLES), *V1_EXCHANGE, "PRAGMA user_version = 1"):
        conn.execute(statement)
    conn.commit()
    conn.close()
    with Store.open(tmp_path / "v1.db") as store:
        assert rows(tmp_path / "v1.db", "PRAGMA user_version") == [(STORE_SCHEMA_VERSION,)]
        assert_upgraded(store)


def test_a_version_1_postgresql_store_is_upgraded_in_place(pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in (*v1_tables(pg.TABLES), "INSERT INTO store_writer (id, schema_version) VALUES (1, 1)",
                          *V1_EXCHANGE):
            conn.execute(statement)
    with Store.open(pg_url) as store:
        assert_upgraded(store)


# ---- PostgreSQL: the database itself ------------------------------------------------------------


def test_postgresql_newer_schema_and_foreign_databases_are_refused(pg_url: str, pg_databases) -> None:
    import psycopg

    Store.open(pg_url).close()
    Store.open(pg_url).close()  # reopening an existing store creates nothing
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE store_writer SET schema_version = %s", (STORE_SCHEMA_VERSION + 1,))
    with pytest.raises(DataError, match=f"store schema version {STORE_SCHEMA_VERSION + 1} is newer"):
        Store.open(pg_url)
    other = pg_databases.create()
    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute("CREATE TABLE sessions (x INTEGER)")
    with pytest.raises(DataError, match="not an oel online store"):
        Store.open(other)
    pg_databases.drop(other)


def test_postgresql_connection_errors_are_one_line_without_the_password(pg_url: str) -> None:
    host = pg_url.split("@", 1)[1].rsplit("/", 1)[0]
    with pytest.raises(DataError) as e:
        Store.open(f"postgresql://postgres:s3cret@{host}/no_such_database")
    assert "cannot open the store" in str(e.value) and "s3cret" not in str(e.value) and "\n" not in str(e.value)
