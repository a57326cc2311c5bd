"""One database, several galleries: a gallery in a schema of its own, found through ``search_path``.

The stores' SQL names no schema, so a connection whose ``search_path`` starts with another schema
reads and writes (and migrates: its own ``schema_migrations`` ledger) the tables there. ``public``
stays on the path for pgvector's ``vector`` type, which the default gallery's migration creates there.

The change feed's NOTIFY channel is one for the database: another schema's write wakes a replica's
follower, which reads its own schema's changes since its last one and finds none (a wasted read, never
a wrong one). The migrations' advisory lock is one too: schemas migrate one after another.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from service.postgres.pool import unavailable_as_error


def url_in_schema(url: str, schema: str) -> str:
    """``url`` (a URL or key=value string) whose connections search ``schema`` first, then ``public``.

    libpq's ``options`` sets ``search_path`` at connection start, for every connection: pooled, the
    migration's and the LISTEN one alike. Options the URL has already are kept.
    """
    given = conninfo_to_dict(url).get("options")
    options = f"{given} " if given else ""
    return make_conninfo(url, options=f"{options}-c search_path={schema},public")


def create_schema(url: str, schema: str, *, timeout_s: float) -> None:
    """``CREATE SCHEMA IF NOT EXISTS schema`` (before the migrations that fill it).

    Two replicas creating it at once: one of them gets a unique violation (IF NOT EXISTS checks before
    it inserts), which means the schema is there.
    """
    statement = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
    with unavailable_as_error(url), psycopg.connect(url, connect_timeout=max(1, round(timeout_s))) as conn:
        try:
            conn.execute(statement)
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateSchema):
            conn.rollback()
