"""PostgreSQL for the tests of the view store's PostgreSQL engine (phg.viewstore.postgres).

`postgres_url`: a fresh database per test (CREATE DATABASE phg_view_<random hex>, dropped WITH (FORCE)
after) on the server at 127.0.0.1:5432 (trust authentication, user postgres; CI has one). Skipped with
the reason when nothing answers there, unless PHG_REQUIRE_POSTGRES=1 (CI, .ci/run), which fails instead.

`PrivatePostgres`: a server of the test's own (initdb + pg_ctl from PG_BIN on a free 127.0.0.1 port), for a
test that stops and starts it. Not in tmp_path: PostgreSQL refuses to run as root, so as root (CI) it runs as
the `postgres` user, who cannot enter root's tmp_path, and its socket's path must be short; a directory of
/tmp of its own instead, removed after.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from phg.demo.peers import free_port

SERVER = ("127.0.0.1", 5432)
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_server() -> None:
    """Skip the test when 127.0.0.1:5432 does not answer; fail instead under PHG_REQUIRE_POSTGRES=1."""
    if answers(*SERVER):
        return
    if os.environ.get("PHG_REQUIRE_POSTGRES") == "1":
        pytest.fail("PHG_REQUIRE_POSTGRES=1 but no PostgreSQL answers on 127.0.0.1:5432")
    pytest.skip("no PostgreSQL on 127.0.0.1:5432 (trust authentication, user postgres): the view store's "
                "PostgreSQL engine is not tested here (CI sets PHG_REQUIRE_POSTGRES=1)")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh, empty database on 127.0.0.1:5432, dropped after the test."""
    require_server()
    name = f"phg_view_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class PrivatePostgres:
    """A PostgreSQL server of one test's own on a free loopback port, in a short directory of /tmp (its Unix
    socket's path must fit 107 bytes; as root it belongs to the `postgres` user). Over TCP it asks for a
    password (scram-sha-256): `url` names its database phg as user phg, whose password is PASSWORD; the
    tests' own administration goes through the Unix socket (trust)."""

    PASSWORD = "s3cret-view-pw"

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            if os.environ.get("PHG_REQUIRE_POSTGRES") == "1":
                pytest.fail(f"PHG_REQUIRE_POSTGRES=1 but {PG_BIN}/initdb is missing")
            pytest.skip(f"no {PG_BIN}/initdb: PostgreSQL 15's server binaries are not installed")
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        self.dir = Path(tempfile.mkdtemp(prefix="phg-pg-"))
        if self._as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        self.start()
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f"CREATE ROLE phg LOGIN PASSWORD '{self.PASSWORD}'")
            admin.execute("CREATE DATABASE phg OWNER phg")
        self.url = f"postgresql://phg@127.0.0.1:{self.port}/phg"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.dir}&port={self.port}"

    def _run(self, *command: str, check: bool = True) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_root else []
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 or not check, done.stdout + done.stderr

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w",
                  "-t", "30", "start")

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def close(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop",
                  check=False)  # stopped already, or never started: nothing to do
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.close()
