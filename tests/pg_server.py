"""A throwaway PostgreSQL cluster for the store tests: initdb + pg_ctl in a temp dir, on a free port.

The server binaries come from Debian's `postgresql` package (`make test` installs it); the
cluster lives in a temp dir, listens on 127.0.0.1 only, trusts local connections, and is stopped
and removed when the test session ends. PostgreSQL refuses to run as root, so when the tests run
as root (a CI container) the cluster is created and run as the `postgres` user the package made
(or `nobody`), through `runuser`. Tests skip, saying why, only when no server can be found.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def find_bin(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH, else the newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return candidates[-1] if candidates else None


def why_unavailable() -> str | None:
    """None when a cluster can be started here, else the reason (for pytest.skip)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]')"
    if not (find_bin("initdb") and find_bin("pg_ctl")):
        return "PostgreSQL server binaries not found (apt-get install postgresql; make test does this)"
    if os.geteuid() == 0 and not (shutil.which("runuser") and _service_user()):
        return "running as root without runuser or a postgres/nobody user to run the server as"
    return None


def _service_user() -> str | None:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], user: str | None) -> None:
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")


@contextmanager
def cluster() -> Iterator[str]:
    """Start a cluster; yields the admin URL (postgresql://postgres@127.0.0.1:<port>/postgres)."""
    user = _service_user() if os.geteuid() == 0 else None
    tmp = Path(tempfile.mkdtemp(prefix="oel-pg-"))
    data = tmp / "data"
    if user:
        pw = pwd.getpwnam(user)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
    port = free_port()
    try:
        _run([find_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"], user)
        options = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c max_connections=200"
        _run([find_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(tmp / "log"), "-w", "-t", "60", "start"],
             user)
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            _run([find_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], user)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Databases:
    """Fresh databases on one cluster: one per test, dropped afterwards."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self._n = 0

    def create(self) -> str:
        import psycopg

        self._n += 1
        name = f"oel_test_{os.getpid()}_{self._n}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.admin_url.rsplit("/", 1)[0] + f"/{name}"

    def drop(self, url: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
