"""Versioned schema migrations, applied at start, each once, in order, in its own transaction.

Replicas starting together serialize on an advisory lock, so exactly one applies a pending step and
the others see it done. A database newer than this code (a version this build does not know) is
refused rather than used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from service.postgres.pool import unavailable_as_error

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    description TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""
# Any constant shared by every replica: the key of the advisory lock held while migrating.
_MIGRATION_LOCK_KEY = 0x46414345  # "FACE"


@dataclass(frozen=True)
class Migration:
    version: int  # 1, 2, ... without gaps
    description: str
    sql: str  # one or more statements


class SchemaTooNewError(Exception):
    """The database was migrated by a newer build than this one."""


def applied_version(conn: psycopg.Connection[tuple[object, ...]], component: str) -> int:
    row = conn.execute(
        "SELECT coalesce(max(version), 0) FROM schema_migrations WHERE component = %s", (component,)
    ).fetchone()
    return int(row[0]) if row is not None else 0  # type: ignore[call-overload]


def apply_migrations(url: str, component: str, migrations: Sequence[Migration], *, timeout_s: float) -> int:
    """Bring ``component``'s schema up to the last of ``migrations``; returns the version now applied.

    Runs on a connection of its own, before any pool opens: the pool's connections then see the
    types the migrations made (pgvector's ``vector``) when they register adapters.
    """
    expected = list(range(1, len(migrations) + 1))
    if [m.version for m in migrations] != expected:
        raise ValueError(f"{component} migrations must be numbered 1..{len(migrations)} in order")
    with unavailable_as_error(url), psycopg.connect(url, connect_timeout=max(1, round(timeout_s))) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            conn.execute(_CREATE_LEDGER)
            current = applied_version(conn, component)
            if current > len(migrations):
                raise SchemaTooNewError(
                    f"the database's {component} schema is at version {current}, newer than this "
                    f"build knows ({len(migrations)}): upgrade the service, or use another database"
                )
            for migration in migrations[current:]:
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (component, version, description) VALUES (%s, %s, %s)",
                    (component, migration.version, migration.description),
                )
        return len(migrations)
