"""The key-store backends the store-level tests run on: SQLite in a data dir, and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from service.auth.keys import KEYS_DB_FILE, KeyStore
from service.auth.stores import open_key_store
from service.settings import Settings
from tests.postgres_server import PostgresServer

KEY_BACKENDS = ("sqlite", "postgresql")


@dataclass
class KeyBackend:
    """One place keys are kept; ``open`` gives another store on it (another replica, or the CLI)."""

    name: str
    data_dir: Path
    database_url: str | None
    server: PostgresServer | None = None
    opened: list[KeyStore] = field(default_factory=list)
    foreign: list[KeyBackend] = field(default_factory=list)
    made_databases: list[str] = field(default_factory=list)

    def settings(self, **overrides: object) -> Settings:
        url = SecretStr(self.database_url) if self.database_url is not None else None
        values: dict[str, object] = {"data_dir": self.data_dir, "database_url": url, **overrides}
        return Settings.model_validate(values)

    def open(self) -> KeyStore:
        store = open_key_store(self.settings())
        self.opened.append(store)
        return store

    def elsewhere(self, data_dir: Path) -> KeyBackend:
        """The same kind of backend on other storage: another data dir, another database (its own keys)."""
        url = None
        if self.server is not None:
            name = self.server.create_database()
            self.made_databases.append(name)
            url = self.server.url_for(name)
        other = KeyBackend(self.name, data_dir, url)
        self.foreign.append(other)
        return other

    def stored_bytes(self) -> bytes:
        """Everything the backend holds about keys, as bytes (to look for a leaked secret)."""
        if self.database_url is None:
            return b"".join(path.read_bytes() for path in sorted(self.data_dir.glob(f"{KEYS_DB_FILE}*")))
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute("SELECT t::text FROM api_keys t").fetchall()
        return "\n".join(str(row[0]) for row in rows).encode()

    def stored_rows(self) -> int:
        """Rows in the backend's table, counted without the store's code."""
        if self.database_url is None:
            import sqlite3

            with sqlite3.connect(self.data_dir / KEYS_DB_FILE) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM api_keys").fetchone()
        return int(row[0]) if row is not None else 0

    def close(self) -> None:
        for backend in [self, *self.foreign]:
            for store in backend.opened:
                store.close()
        if self.server is not None:
            for name in self.made_databases:
                self.server.drop_database(name)


@pytest.fixture(params=KEY_BACKENDS)
def key_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyBackend]:
    """Each test once on SQLite and once on PostgreSQL (a fresh database from ``pg_url``)."""
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        backend = KeyBackend("postgresql", tmp_path / "data", request.getfixturevalue("pg_url"), server)
    else:
        backend = KeyBackend("sqlite", tmp_path / "data", None)
    yield backend
    backend.close()
