"""The PostgreSQL gallery's change feed: what a FAISS replica reads to follow the shared gallery.

The write side (``service/gallery/postgres_store.py``, contract in ``postgres_schema.py``) bumps
``gallery_meta.change_seq``, logs one ``gallery_changes`` row and sends ``NOTIFY`` in every write
transaction. This side reads that log in REPEATABLE READ transactions (one consistent view per call:
the log rows and the embeddings they point at agree), and waits for the notifications on a connection
of its own: a LISTEN needs a session that stays open, which a pooled connection is not.

Every connection-level failure (database down, pool exhausted) surfaces as ``StoreUnavailableError``,
naming the database by its redacted URL: the follower backs off and retries.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from service.gallery.pg_vectors import read_embeddings
from service.gallery.postgres_schema import NOTIFY_CHANNEL
from service.gallery.store import (
    EmbeddingSizeError,
    FaceChange,
    GalleryError,
    GallerySnapshot,
    IntArray,
    StoreUnavailableError,
)
from service.pipeline.types import FloatArray
from service.postgres.pool import UNAVAILABLE_ERRORS, redact_url

_REPEATABLE_READ = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
_META = "SELECT change_seq, embedding_size FROM gallery_meta"
_LOG_AFTER = (
    "SELECT seq, extract(epoch FROM committed_at)::float8, added, removed, reset "
    "FROM gallery_changes WHERE seq > %s ORDER BY seq LIMIT %s"
)
_OLDEST_UNAPPLIED_AGE = (
    "SELECT greatest(0, extract(epoch FROM clock_timestamp() - committed_at))::float8 "
    "FROM gallery_changes WHERE seq > %s ORDER BY seq LIMIT 1"
)

Connection = psycopg.Connection[tuple[object, ...]]


@dataclass(frozen=True)
class _LogRow:
    seq: int
    committed_at: float
    added: list[int]
    removed: list[int]
    reset: bool


class PostgresChangeFeed:
    """The ``ChangeFeed`` of a PostgreSQL gallery: reads on ``pool``, LISTEN on its own connection.

    ``wait_for_change`` is called from one thread (the follower); ``close`` may come from another, at
    shutdown, and never waits for a LISTEN in progress: that one ends within its timeout and closes
    the connection itself.
    """

    def __init__(self, pool: ConnectionPool, url: str, *, connect_timeout_s: float | None = None) -> None:
        self._pool = pool
        self._url = url
        self._connect_timeout_s = connect_timeout_s if connect_timeout_s is not None else pool.timeout
        self._listen_conn: Connection | None = None
        self._listen_lock = threading.Lock()  # held while a wait_for_change uses the listen connection
        self._closed = False

    # ---- reads ------------------------------------------------------------------------------------

    def snapshot(self) -> GallerySnapshot:
        """The searchable faces (embeddings of the pinned size) and the sequence they reflect."""
        with self._read_transaction() as conn:
            change_seq, embedding_size = _meta(conn)
            ids, embeddings = _searchable_embeddings(conn, embedding_size)
        return GallerySnapshot(change_seq, ids, embeddings)

    def changes_since(self, seq: int, limit: int = 1000) -> list[FaceChange] | None:
        """Entries after ``seq``, oldest first, at most ``limit``.

        ``None`` (rebuild from a snapshot) when entries after ``seq`` were trimmed from the log, and
        when ``seq`` is past the database's sequence (a database restored from an older backup).
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        with self._read_transaction() as conn:
            change_seq, embedding_size = _meta(conn)
            if seq > change_seq:
                return None
            rows = [_log_row(row) for row in conn.execute(_LOG_AFTER, (seq, limit)).fetchall()]
            if [row.seq for row in rows] != list(range(seq + 1, seq + 1 + len(rows))):
                return None  # the first entry after seq is gone (or a hole: the log can't be trusted)
            if not rows and change_seq > seq:
                return None  # every entry after seq is gone
            added_ids = sorted({index_id for row in rows for index_id in row.added})
            ids, embeddings = (
                _searchable_embeddings(conn, embedding_size, "index_id = ANY(%s)", [added_ids])
                if added_ids
                else (np.zeros(0, dtype=np.int64), np.zeros((0, embedding_size), dtype=np.float32))
            )
        position_of = {int(index_id): position for position, index_id in enumerate(ids)}
        return [_face_change(row, position_of, embeddings) for row in rows]

    def oldest_unapplied_age_s(self, applied_seq: int) -> float:
        """Seconds (database clock) since the first entry after ``applied_seq`` committed.

        0.0 when the log holds no entry after it: caught up, or (rarely) the log was trimmed whole, which
        the next ``changes_since`` answers with ``None``.
        """
        with self._read_transaction() as conn:
            row = conn.execute(_OLDEST_UNAPPLIED_AGE, (applied_seq,)).fetchone()
        return float(row[0]) if row is not None else 0.0  # type: ignore[arg-type]

    @contextmanager
    def _read_transaction(self) -> Iterator[Connection]:
        """A pooled connection in one REPEATABLE READ, READ ONLY transaction (one view of the data)."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute(_REPEATABLE_READ)
                yield conn
        except UNAVAILABLE_ERRORS as error:
            raise self._unavailable(error) from error

    # ---- notifications ----------------------------------------------------------------------------

    def wait_for_change(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a NOTIFY on the gallery's channel; True if one came.

        Notifications that came meanwhile are drained too: one wake-up covers them all (the caller
        reads the log, not the payloads). After a failure the next call reconnects.
        """
        with self._listen_lock:
            if self._closed:
                return False
            try:
                conn = self._listening_connection()
                # Consumed to the end (not any()): the generator holds the connection's lock until done.
                announced = sum(1 for _ in conn.notifies(timeout=max(0.0, timeout_s), stop_after=1)) > 0
                if announced:
                    for _ in conn.notifies(timeout=0.0):
                        pass
            except UNAVAILABLE_ERRORS as error:
                self._drop_listen_connection()
                if self._closed:  # closed under us at shutdown: not an outage
                    return False
                raise self._unavailable(error) from error
            finally:
                if self._closed:
                    self._drop_listen_connection()
            return announced

    def _listening_connection(self) -> Connection:
        if self._listen_conn is None or self._listen_conn.closed:
            conn: Connection = psycopg.connect(
                self._url, autocommit=True, connect_timeout=max(1, round(self._connect_timeout_s))
            )
            try:
                conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            except BaseException:
                conn.close()
                raise
            self._listen_conn = conn
        return self._listen_conn

    def _drop_listen_connection(self) -> None:
        conn, self._listen_conn = self._listen_conn, None
        if conn is not None:
            with suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Stop listening. Returns at once: a wait in progress closes the connection when it ends."""
        self._closed = True
        if self._listen_lock.acquire(blocking=False):
            try:
                self._drop_listen_connection()
            finally:
                self._listen_lock.release()

    def _unavailable(self, error: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"the gallery database at {redact_url(self._url)} is unavailable "
            f"({type(error).__name__}: {_without_password(str(error), self._url)}); retrying"
        )


def _without_password(text: str, url: str) -> str:
    """``text`` with ``url``'s password hidden wherever it appears (a driver message might quote it)."""
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:  # not a parseable conninfo: nothing more to hide than redact_url does
        password = None
    redacted = redact_url(text)
    return redacted.replace(str(password), "***") if password else redacted


def _meta(conn: Connection) -> tuple[int, int]:
    """The change sequence and the pinned embedding size (0 before the gallery is pinned)."""
    row = conn.execute(_META).fetchone()
    if row is None:
        raise GalleryError("the gallery database has no gallery_meta row: was it migrated?")
    change_seq, embedding_size = row
    return int(change_seq), int(embedding_size or 0)  # type: ignore[call-overload]


def _searchable_embeddings(
    conn: Connection, embedding_size: int, condition: str = "", params: Sequence[object] = ()
) -> tuple[IntArray, FloatArray]:
    """The faces (``condition`` selects) whose embedding has the pinned size, by index_id.

    Others are not searchable (the store's ``bad_rows`` reports them): left out, not fatal. They are
    filtered only when there are any: the filter in the query costs the planner its index scan in
    index_id order (a sort of every row instead, 2-3x slower at 1M faces). Same transaction, same view.
    """
    where = f"WHERE {condition}" if condition else ""
    try:
        return read_embeddings(conn, embedding_size, where, params)
    except EmbeddingSizeError:
        sized = f"{where} AND vector_dims(embedding) = %s" if where else "WHERE vector_dims(embedding) = %s"
        return read_embeddings(conn, embedding_size, sized, [*params, embedding_size])


def _log_row(row: Sequence[object]) -> _LogRow:
    seq, committed_at, added, removed, reset = row
    return _LogRow(
        int(seq),  # type: ignore[call-overload]
        float(committed_at),  # type: ignore[arg-type]
        [int(index_id) for index_id in added],  # type: ignore[attr-defined]
        [int(index_id) for index_id in removed],  # type: ignore[attr-defined]
        bool(reset),
    )


def _face_change(row: _LogRow, position_of: dict[int, int], embeddings: FloatArray) -> FaceChange:
    """``row`` as a feed entry: its added faces that still exist, with their embeddings."""
    positions = [position_of[index_id] for index_id in row.added if index_id in position_of]
    added_ids: IntArray = np.array(
        [index_id for index_id in row.added if index_id in position_of], dtype=np.int64
    )
    return FaceChange(
        seq=row.seq,
        committed_at=row.committed_at,
        added_ids=added_ids,
        added=np.ascontiguousarray(embeddings[positions], dtype=np.float32),
        removed_ids=np.array(row.removed, dtype=np.int64),
        reset=row.reset,
    )
