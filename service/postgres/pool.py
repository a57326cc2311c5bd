"""One connection pool per database URL, opened eagerly so a wrong URL fails the start, not a request.

psycopg 3's pool checks every connection as it is handed out (``check_connection``), so a database
restart costs the requests made while it is down (answered 503 by the caller) and nothing after: broken
connections are replaced without restarting the service.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool, PoolTimeout

# psycopg errors that mean "the database is unreachable or went away", not "this query is wrong".
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    PoolTimeout,
)


class DatabaseUnavailableError(Exception):
    """The database cannot be reached now; the operation did nothing and may be retried."""


@dataclass(frozen=True)
class PoolOptions:
    min_size: int = 1
    max_size: int = 8
    timeout_s: float = 3.0  # wait for a connection this long, then DatabaseUnavailableError


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and error messages)."""
    without_userinfo_password = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", without_userinfo_password)


def _register_vector(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    register_vector(conn)  # numpy arrays in and out of pgvector's ``vector`` columns
    conn.commit()


def open_pool(url: str, options: PoolOptions, *, name: str, vectors: bool = False) -> ConnectionPool:
    """A pool on ``url`` with at least ``min_size`` connections made now (raises when unreachable).

    ``vectors``: register pgvector's types on each connection (the extension must exist: migrate first).
    """
    pool: ConnectionPool = ConnectionPool(
        url,
        min_size=options.min_size,
        max_size=options.max_size,
        timeout=options.timeout_s,
        check=ConnectionPool.check_connection,
        configure=_register_vector if vectors else None,
        name=name,
        open=False,
        # psycopg_pool's default keeps retrying a lost server for 5 minutes with doubling pauses; a
        # short one gives up fast, so the next request after a restart reconnects at once.
        reconnect_timeout=max(2 * options.timeout_s, 5.0),
    )
    try:
        pool.open(wait=True, timeout=max(options.timeout_s, 5.0))
    except PoolTimeout as error:
        pool.close()
        raise DatabaseUnavailableError(f"cannot reach PostgreSQL at {redact_url(url)}: {error}") from None
    return pool


@contextmanager
def unavailable_as_error(url: str) -> Iterator[None]:
    """Turn psycopg's connection-level failures into ``DatabaseUnavailableError`` (a 503 upstream)."""
    try:
        yield
    except UNAVAILABLE_ERRORS as error:
        raise DatabaseUnavailableError(
            f"the database at {redact_url(url)} is unavailable ({type(error).__name__}: {error}); "
            "nothing was changed, retry shortly"
        ) from error
