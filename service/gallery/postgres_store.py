"""PostgresGalleryStore: the gallery in PostgreSQL (+pgvector), shared by every replica of the service.

Same contract and semantics as ``SqliteGalleryStore`` (see ``service/gallery/store.py``); the schema is
``service/gallery/postgres_schema.py``. What differs:

- Every write transaction starts with ``UPDATE gallery_meta SET change_seq = change_seq + 1``: writers
  (of every replica) serialize on that row, so change sequence numbers commit densely and in order.
  The same transaction logs one ``gallery_changes`` row (the index ids it added and removed), sends
  ``NOTIFY`` (delivered at commit) and trims the log to ``CHANGE_LOG_RETENTION`` entries. A rolled-back
  write takes its sequence step with it. Replicas tail that log (``service/gallery/postgres_feed.py``).
- A database that cannot be reached is a ``StoreUnavailableError`` (a 503 upstream), never a psycopg
  error, and never names the password. The pool checks connections as it hands them out, so the same
  store works again once the database is back.
- No data-dir lock: replicas share the database by design. ``import_batch`` copies another gallery's
  rows in with their ids (for ``face-service migrate``).
- With ``vector_index`` (FACE_SEARCH=pgvector) the HNSW index is made once the pin fixes the size, and
  the opener hands the gallery a ``PgvectorIndex`` to search with instead of a FAISS index.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from service.gallery.pg_vectors import read_embeddings
from service.gallery.pgvector_index import PgvectorIndex
from service.gallery.postgres_feed import PostgresChangeFeed
from service.gallery.postgres_schema import COMPONENT, HNSW_INDEX, MIGRATIONS, NOTIFY_CHANNEL, hnsw_index_sql
from service.gallery.rows import decode_cursor, encode_cursor, stored_metadata, utc_timestamp
from service.gallery.store import (
    LIKE_ESCAPE,
    SCHEMA_VERSION,
    BadRow,
    DuplicateNameError,
    EmbeddingSizeError,
    FaceNotFoundError,
    FaceOwner,
    FaceRecord,
    FaceRef,
    GalleryCounts,
    GalleryError,
    ImportClashError,
    IntArray,
    NewFace,
    OpenedStore,
    PackMismatchError,
    PackPin,
    PackPinMissingError,
    PortableFace,
    SchemaVersionError,
    StoredCrop,
    StoreOptions,
    StoreUnavailableError,
    Subject,
    SubjectFilter,
    SubjectNotFoundError,
    SubjectPage,
    decode_png,
    like_prefix,
    name_key,
)
from service.pipeline.types import FloatArray
from service.postgres.migrations import SchemaTooNewError, applied_version, apply_migrations
from service.postgres.pool import (
    UNAVAILABLE_ERRORS,
    DatabaseUnavailableError,
    PoolOptions,
    open_pool,
    redact_url,
    unavailable_as_error,
)

logger = logging.getLogger(__name__)

# Change-log rows kept: a replica further behind than this rebuilds from a snapshot instead.
CHANGE_LOG_RETENTION = 100_000
# Advisory lock held while making the HNSW index, so replicas starting together don't race on its name.
_VECTOR_INDEX_LOCK_KEY = 0x46414349  # "FACI"

Connection = psycopg.Connection[tuple[Any, ...]]


class DatabaseDamagedError(GalleryError):
    """The gallery database holds content the service cannot use (rows that cannot be searched)."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(
            f"the gallery database at {url} is damaged ({why}): fix or delete the rows named, or "
            "restore the database from a backup"
        )
        self.url = url
        self.why = why


@dataclass(frozen=True)
class ImportedFace:
    """A face copied from another gallery with its ids, timestamps and scores (``import_batch``)."""

    record: FaceRecord
    embedding: FloatArray
    crop: StoredCrop | None


@dataclass
class _Change:
    """What one write transaction did, logged at its end (the change feed's entry)."""

    seq: int
    pack_id: str | None  # the pin the transaction saw, read with the sequence bump
    embedding_size: int | None
    added: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    reset: bool = False


class PostgresGalleryStore:
    """PostgreSQL access for the gallery. Thread-safe: each call takes a pooled connection.

    Owns ``pool``: ``close`` closes it. ``url`` is only for messages (redacted before any use).
    """

    def __init__(
        self,
        pool: ConnectionPool,
        url: str,
        *,
        vector_index: bool = False,
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 64,
    ) -> None:
        self._pool = pool
        self._url = _redacted(url)
        self._password_source = url  # only to strip the password from a driver's message, never shown
        self._vector_index = vector_index
        self._hnsw_m = hnsw_m
        self._hnsw_ef_construction = hnsw_ef_construction
        # The connection of an open ``repinning`` block, per thread: reads made inside the block
        # (``iter_crops``) run in its transaction instead of waiting for a second pooled connection.
        self._repinning = threading.local()

    @property
    def url(self) -> str:
        """The database URL, password redacted."""
        return self._url

    def close(self) -> None:
        self._pool.close()

    def damaged(self, why: str) -> DatabaseDamagedError:
        return DatabaseDamagedError(self._url, why)

    # ------------------------------------------------------------------ connections

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """Connection-level failures become ``StoreUnavailableError``; a full disk stays what it is."""
        try:
            yield
        except psycopg.errors.DiskFull:
            raise
        except UNAVAILABLE_ERRORS as error:
            detail = _without_password(_first_line(str(error)), self._password_source)
            raise StoreUnavailableError(
                f"the gallery database at {self._url} is unavailable ({type(error).__name__}: {detail}); "
                "nothing was changed, retry shortly"
            ) from None

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection for reads: the open repinning transaction's on its thread, else a pooled one."""
        inside = self._repinning_conn()
        if inside is not None:
            yield inside
            return
        with self._reachable(), self._pool.connection() as conn:
            yield conn

    def _repinning_conn(self) -> Connection | None:
        conn: Connection | None = getattr(self._repinning, "conn", None)
        return conn

    @contextmanager
    def _write(self) -> Iterator[tuple[Connection, _Change]]:
        """One write transaction: the sequence bump first, the change, then its log row and NOTIFY."""
        with self._reachable(), self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "UPDATE gallery_meta SET change_seq = change_seq + 1 "
                "RETURNING change_seq, pack_id, embedding_size"
            ).fetchone()
            if row is None:
                raise self.damaged("the gallery_meta row is missing")
            change = _Change(int(row[0]), row[1], row[2])
            yield conn, change
            conn.execute(
                "INSERT INTO gallery_changes (seq, added, removed, reset) "
                "VALUES (%s, %s::bigint[], %s::bigint[], %s)",
                (change.seq, change.added, change.removed, change.reset),
            )
            conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(change.seq)))
            conn.execute("DELETE FROM gallery_changes WHERE seq <= %s", (change.seq - CHANGE_LOG_RETENTION,))

    def change_seq(self) -> int:
        with self._reading() as conn:
            row = conn.execute("SELECT change_seq FROM gallery_meta").fetchone()
        return 0 if row is None else int(row[0])

    # ------------------------------------------------------------------ integrity

    def quick_check(self) -> str | None:
        """PostgreSQL keeps its own pages sound; what can break here is the gallery_meta row."""
        with self._reading() as conn:
            rows = int(_scalar(conn, "SELECT COUNT(*) FROM gallery_meta"))
        return None if rows == 1 else f"gallery_meta holds {rows} rows, not 1"

    def bad_rows(self) -> list[BadRow]:
        """Faces that cannot be searched: embeddings of another size than the pin's."""
        pin = self._require_pin()
        with self._reading() as conn:
            return _bad_rows(conn, pin)

    def searchable_embeddings(self) -> tuple[IntArray, FloatArray, list[BadRow]]:
        """(index_ids, embeddings) of every searchable face, and the faces that are not, in one snapshot."""
        pin = self._require_pin()
        in_repinning = self._repinning_conn() is not None  # then its transaction is already under way
        with self._reading() as conn, conn.transaction():
            if not in_repinning:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            ids, matrix = read_embeddings(
                conn, pin.embedding_size, "WHERE vector_dims(embedding) = %s", (pin.embedding_size,)
            )
            return ids, matrix, _bad_rows(conn, pin)

    # ------------------------------------------------------------------ pack pin

    def pinned_pack(self) -> PackPin | None:
        with self._reading() as conn:
            row = conn.execute("SELECT pack_id, embedding_size, schema_version FROM gallery_meta").fetchone()
        if row is None or row[0] is None or row[1] is None:
            return None
        return PackPin(row[0], int(row[1]), int(row[2] if row[2] is not None else SCHEMA_VERSION))

    def pin(self, pack_id: str, embedding_size: int) -> PackPin:
        """Pin a new gallery to ``pack_id``, or check that an existing one already is.

        Only an empty gallery is pinned: faces without a pin come from an unknown pack. Checking an
        existing pin writes nothing (every replica checks it at start). With ``vector_index`` the HNSW
        index is made here, once the embedding size is known.
        """
        pin = self.pinned_pack() or self._first_pin(pack_id, embedding_size)
        if pin.pack_id != pack_id:
            raise PackMismatchError(self._url, pin.pack_id, pack_id)
        if pin.embedding_size != embedding_size:
            raise PackMismatchError(
                self._url,
                pin.pack_id,
                pack_id,
                f" (same id, but {pin.embedding_size}-d stored vs {embedding_size}-d now: the pack changed)",
            )
        if self._vector_index:
            self._ensure_vector_index(embedding_size)
        return pin

    def _first_pin(self, pack_id: str, embedding_size: int) -> PackPin:
        with self._write() as (conn, change):
            if change.pack_id is not None and change.embedding_size is not None:  # another replica won
                return PackPin(change.pack_id, change.embedding_size)
            faces = int(_scalar(conn, "SELECT COUNT(*) FROM faces"))
            if faces:
                raise PackPinMissingError(self._url, faces)
            conn.execute(
                "UPDATE gallery_meta SET pack_id = %s, embedding_size = %s, schema_version = %s",
                (pack_id, embedding_size, SCHEMA_VERSION),
            )
        return PackPin(pack_id, embedding_size)

    def _ensure_vector_index(self, embedding_size: int) -> None:
        with self._reachable(), self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_VECTOR_INDEX_LOCK_KEY,))
            conn.execute(self._vector_index_sql(embedding_size))

    def _vector_index_sql(self, embedding_size: int) -> str:
        return hnsw_index_sql(embedding_size, self._hnsw_m, self._hnsw_ef_construction)

    def _require_pin(self) -> PackPin:
        pin = self.pinned_pack()
        if pin is None:
            raise GalleryError(f"the gallery at {self._url} is not pinned to a pack yet (call pin() first)")
        return pin

    # ------------------------------------------------------------------ subjects

    def create_subject(
        self, name: str, metadata: Mapping[str, Any] | None = None, *, unique_name: bool = False
    ) -> Subject:
        """A new subject. ``unique_name`` is race-free across replicas: every write transaction first
        locks the gallery_meta row (``_write``), so the check and the insert of two concurrent creates
        cannot interleave, and the second one's check (READ COMMITTED: a fresh snapshot per statement)
        sees the first one's committed row."""
        subject_id = str(uuid.uuid4())
        now = utc_timestamp()
        key = name_key(name)
        with self._write() as (conn, _):
            if unique_name:
                _refuse_taken_name(conn, name, key)
            conn.execute(
                "INSERT INTO subjects (id, name, name_key, metadata, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (subject_id, name, key, Jsonb(dict(metadata or {})), now, now),
            )
            duplicate = _other_with_key(conn, key, subject_id) is not None
        return Subject(subject_id, name, dict(metadata or {}), now, now, 0, duplicate)

    _SUBJECT_COLUMNS = (
        "s.seq, s.id, s.name, s.metadata, s.created_at, s.updated_at, "
        "(SELECT COUNT(*) FROM faces f WHERE f.subject_id = s.id) AS face_count, "
        "EXISTS (SELECT 1 FROM subjects o WHERE o.name_key = s.name_key AND o.seq <> s.seq) "
        "AS duplicate_name"
    )

    def fill_name_keys(self, batch_size: int = 1000) -> int:
        """Give every subject lacking a ``name_key`` its key (rows from before migration 2, or written
        by an older replica); returns how many. Not a change of content: nothing is logged."""
        filled = 0
        while True:
            with self._reachable(), self._pool.connection() as conn, conn.transaction():
                rows = conn.execute(
                    "SELECT seq, name FROM subjects WHERE name_key IS NULL ORDER BY seq LIMIT %s "
                    "FOR UPDATE SKIP LOCKED",
                    (batch_size,),
                ).fetchall()
                with conn.cursor() as cursor:
                    cursor.executemany(
                        "UPDATE subjects SET name_key = %s WHERE seq = %s",
                        [(name_key(name), seq) for seq, name in rows],
                    )
            filled += len(rows)
            if len(rows) < batch_size:
                return filled

    def get_subject(self, subject_id: str) -> Subject:
        with self._reading() as conn:
            row = conn.execute(
                f"SELECT {self._SUBJECT_COLUMNS} FROM subjects s WHERE s.id = %s", (subject_id,)
            ).fetchone()
        if row is None:
            raise SubjectNotFoundError(subject_id)
        return _subject(row)

    def list_subjects(
        self, cursor: str | None = None, limit: int = 50, where: SubjectFilter | None = None
    ) -> SubjectPage:
        """Subjects in creation order, those ``where`` keeps; pass ``next_cursor`` back for the next page.

        Indexed (migration 2): the name prefix by ``subjects_by_name_key`` (text_pattern_ops, a range
        for a left-anchored LIKE), the metadata criteria by ``subjects_by_metadata`` (GIN: ``?``, ``@>``).
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        after = decode_cursor(cursor) if cursor else 0
        conditions, params = _filter_sql(where or SubjectFilter())
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT {self._SUBJECT_COLUMNS} FROM subjects s WHERE s.seq > %s{conditions} "
                "ORDER BY s.seq LIMIT %s",
                (after, *params, limit + 1),
            ).fetchall()
        items = [_subject(row) for row in rows[:limit]]
        next_cursor = encode_cursor(int(rows[limit - 1][0])) if len(rows) > limit else None
        return SubjectPage(items, next_cursor)

    def update_subject(
        self,
        subject_id: str,
        *,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        unique_name: bool = False,
    ) -> Subject:
        new_metadata = None if metadata is None else Jsonb(dict(metadata))
        key = None if name is None else name_key(name)
        with self._write() as (conn, _):
            if name is not None and key is not None and unique_name:
                _refuse_taken_name(conn, name, key, subject_id)
            updated = conn.execute(
                "UPDATE subjects SET name = coalesce(%s, name), name_key = coalesce(%s, name_key), "
                "metadata = coalesce(%s, metadata), updated_at = %s WHERE id = %s",
                (name, key, new_metadata, utc_timestamp(), subject_id),
            ).rowcount
            if updated == 0:
                raise SubjectNotFoundError(subject_id)
        return self.get_subject(subject_id)

    def delete_subject(self, subject_id: str) -> list[FaceRef]:
        """Delete a subject and (cascade) its faces; returns the deleted faces."""
        with self._write() as (conn, change):
            faces = [
                FaceRef(face_id, int(index_id))
                for face_id, index_id in conn.execute(
                    "SELECT id, index_id FROM faces WHERE subject_id = %s ORDER BY index_id", (subject_id,)
                )
            ]
            if conn.execute("DELETE FROM subjects WHERE id = %s", (subject_id,)).rowcount == 0:
                raise SubjectNotFoundError(subject_id)
            change.removed = [face.index_id for face in faces]
        return faces

    def merge_subject(self, source_id: str, target_id: str) -> Subject:
        """Move the source's faces to the target and delete the source, in one transaction.

        The metadata rule (see ``GalleryStore.merge_subject``) is JSONB's ``source || target``: the
        target's top-level keys win, keys only the source has are added. Logged as a change adding
        and removing no index ids (replicas' indexes hold the same faces; hits resolve to subjects
        through the store).
        """
        if source_id == target_id:
            raise ValueError(f"cannot merge subject {source_id!r} into itself")
        with self._write() as (conn, _):
            for subject_id in (source_id, target_id):
                if conn.execute("SELECT 1 FROM subjects WHERE id = %s", (subject_id,)).fetchone() is None:
                    raise SubjectNotFoundError(subject_id)
            conn.execute("UPDATE faces SET subject_id = %s WHERE subject_id = %s", (target_id, source_id))
            conn.execute(
                "UPDATE subjects t SET updated_at = %s, metadata = CASE "
                "WHEN jsonb_typeof(s.metadata) = 'object' AND jsonb_typeof(t.metadata) = 'object' "
                "THEN s.metadata || t.metadata ELSE t.metadata END "
                "FROM subjects s WHERE t.id = %s AND s.id = %s",
                (utc_timestamp(), target_id, source_id),
            )
            conn.execute("DELETE FROM subjects WHERE id = %s", (source_id,))
        return self.get_subject(target_id)

    # ------------------------------------------------------------------ faces

    def add_faces(self, subject_id: str, faces: Sequence[NewFace]) -> list[FaceRecord]:
        """Add all ``faces`` in one transaction: after an error, none of them is stored."""
        pin = self._require_pin()
        rows = [_face_row(face, pin) for face in faces]  # validated before the transaction
        now = utc_timestamp()
        with self._write() as (conn, change):
            _check_pin_unchanged(change, pin)
            if conn.execute("SELECT 1 FROM subjects WHERE id = %s", (subject_id,)).fetchone() is None:
                raise SubjectNotFoundError(subject_id)
            index_ids = _insert_returning_ids(
                conn,
                "INSERT INTO faces (id, subject_id, embedding, pack_id, det_score, quality, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING index_id",
                [
                    (
                        row.face_id,
                        subject_id,
                        row.embedding,
                        pin.pack_id,
                        row.det_score,
                        Jsonb(row.quality),
                        now,
                    )
                    for row in rows
                ],
            )
            _insert_crops(conn, [(i, row.crop) for i, row in zip(index_ids, rows, strict=True)])
            conn.execute("UPDATE subjects SET updated_at = %s WHERE id = %s", (now, subject_id))
            change.added = index_ids
        return [
            FaceRecord(
                row.face_id,
                index_id,
                subject_id,
                pin.pack_id,
                row.det_score,
                row.quality,
                now,
                row.crop is not None,
            )
            for index_id, row in zip(index_ids, rows, strict=True)
        ]

    _FACE_COLUMNS = (
        "f.id, f.index_id, f.subject_id, f.pack_id, f.det_score, f.quality, f.created_at, "
        "EXISTS (SELECT 1 FROM face_crops c WHERE c.index_id = f.index_id) AS has_crop"
    )

    def list_faces(self, subject_id: str) -> list[FaceRecord]:
        with self._reading() as conn:
            if conn.execute("SELECT 1 FROM subjects WHERE id = %s", (subject_id,)).fetchone() is None:
                raise SubjectNotFoundError(subject_id)
            rows = conn.execute(
                f"SELECT {self._FACE_COLUMNS} FROM faces f WHERE f.subject_id = %s ORDER BY f.index_id",
                (subject_id,),
            ).fetchall()
        return [_face_record(row) for row in rows]

    def get_face(self, face_id: str) -> FaceRecord:
        with self._reading() as conn:
            row = conn.execute(
                f"SELECT {self._FACE_COLUMNS} FROM faces f WHERE f.id = %s", (face_id,)
            ).fetchone()
        if row is None:
            raise FaceNotFoundError(face_id)
        return _face_record(row)

    def get_crop(self, face_id: str) -> StoredCrop | None:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT c.png, c.landmarks FROM faces f LEFT JOIN face_crops c ON c.index_id = f.index_id "
                "WHERE f.id = %s",
                (face_id,),
            ).fetchone()
        if row is None:
            raise FaceNotFoundError(face_id)
        return None if row[0] is None else _crop(row[0], row[1])

    def delete_face(self, face_id: str, subject_id: str | None = None) -> FaceRef:
        """Delete one face (of ``subject_id`` when given); raises FaceNotFoundError otherwise."""
        with self._write() as (conn, change):
            row = conn.execute("SELECT index_id, subject_id FROM faces WHERE id = %s", (face_id,)).fetchone()
            if row is None or (subject_id is not None and row[1] != subject_id):
                raise FaceNotFoundError(face_id)
            conn.execute("DELETE FROM faces WHERE id = %s", (face_id,))
            conn.execute("UPDATE subjects SET updated_at = %s WHERE id = %s", (utc_timestamp(), row[1]))
            change.removed = [int(row[0])]
        return FaceRef(face_id, int(row[0]))

    def move_face(self, face_id: str, subject_id: str) -> FaceRecord:
        """Make one face (its crop follows, keyed by index id) ``subject_id``'s, in one transaction.

        Logged as a change adding and removing no index ids, as a merge is.
        """
        with self._write() as (conn, _):
            row = conn.execute("SELECT subject_id FROM faces WHERE id = %s", (face_id,)).fetchone()
            if row is None:
                raise FaceNotFoundError(face_id)
            if conn.execute("SELECT 1 FROM subjects WHERE id = %s", (subject_id,)).fetchone() is None:
                raise SubjectNotFoundError(subject_id)
            conn.execute("UPDATE faces SET subject_id = %s WHERE id = %s", (subject_id, face_id))
            conn.execute(
                "UPDATE subjects SET updated_at = %s WHERE id = ANY(%s::text[])",
                (utc_timestamp(), [row[0], subject_id]),
            )
        return self.get_face(face_id)

    def subject_embeddings(self, subject_id: str) -> FloatArray:
        """(n, D) embeddings of one subject's faces; raises SubjectNotFoundError."""
        pin = self._require_pin()
        with self._reading() as conn:
            if conn.execute("SELECT 1 FROM subjects WHERE id = %s", (subject_id,)).fetchone() is None:
                raise SubjectNotFoundError(subject_id)
            return read_embeddings(conn, pin.embedding_size, "WHERE subject_id = %s", (subject_id,))[1]

    def all_embeddings(self) -> tuple[IntArray, FloatArray]:
        """Every face's (index_id, embedding), for rebuilding the index."""
        pin = self._require_pin()
        with self._reading() as conn:
            return read_embeddings(conn, pin.embedding_size)

    def owners(self, index_ids: Sequence[int]) -> dict[int, FaceOwner]:
        """The face and subject behind each index id still present (deleted ones are absent)."""
        unique = sorted({int(i) for i in index_ids if i >= 0})
        if not unique:
            return {}
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT f.index_id, f.id, f.subject_id, s.name FROM faces f "
                "JOIN subjects s ON s.id = f.subject_id WHERE f.index_id = ANY(%s::bigint[])",
                (unique,),
            ).fetchall()
        return {int(row[0]): FaceOwner(int(row[0]), row[1], row[2], row[3]) for row in rows}

    def counts(self) -> GalleryCounts:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT (SELECT COUNT(*) FROM subjects), (SELECT COUNT(*) FROM faces)"
            ).fetchone()
        if row is None:  # a SELECT without FROM always returns its one row
            raise self.damaged("counting rows returned nothing")
        return GalleryCounts(int(row[0]), int(row[1]))

    # ------------------------------------------------------------------ re-embedding

    def iter_crops(self, batch_size: int = 256) -> Iterator[list[tuple[int, StoredCrop]]]:
        """Batches of (index_id, crop) for every face that has a crop, in index_id order."""
        last = 0
        while True:
            with self._reading() as conn:
                rows = conn.execute(
                    "SELECT index_id, png, landmarks FROM face_crops WHERE index_id > %s "
                    "ORDER BY index_id LIMIT %s",
                    (last, batch_size),
                ).fetchall()
            if not rows:
                return
            yield [(int(row[0]), _crop(row[1], row[2])) for row in rows]
            last = int(rows[-1][0])

    def faces_without_crop(self) -> list[FaceRef]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT f.id, f.index_id FROM faces f LEFT JOIN face_crops c ON c.index_id = f.index_id "
                "WHERE c.index_id IS NULL ORDER BY f.index_id"
            ).fetchall()
        return [FaceRef(row[0], int(row[1])) for row in rows]

    @contextmanager
    def repinning(
        self, new_pin: PackPin, *, delete_unconverted: bool = False
    ) -> Iterator[PostgresEmbeddingWriter]:
        """Switch the gallery to another pack in ONE transaction (all or nothing), logged as a reset.

        As ``SqliteGalleryStore.repinning``. The HNSW index (sized for the old embeddings) is dropped
        first and remade at the new size, in the same transaction; replicas rebuild from a snapshot.
        """
        old = self._require_pin()
        if old.pack_id == new_pin.pack_id:
            raise ValueError(f"the gallery is already pinned to {new_pin.pack_id!r}")
        with self._write() as (conn, change):
            had_vector_index = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (HNSW_INDEX,)).fetchone()
            conn.execute(f"DROP INDEX IF EXISTS {HNSW_INDEX}")
            self._repinning.conn = conn
            try:
                yield PostgresEmbeddingWriter(conn, new_pin)
            finally:
                self._repinning.conn = None
            left = conn.execute(
                "SELECT COUNT(*) FROM faces WHERE pack_id <> %s", (new_pin.pack_id,)
            ).fetchone()
            if left is not None and left[0] and not delete_unconverted:
                raise GalleryError(f"{left[0]} faces were not re-embedded; nothing was changed")
            deleted = conn.execute(
                "DELETE FROM faces WHERE pack_id <> %s RETURNING index_id", (new_pin.pack_id,)
            ).fetchall()
            conn.execute(
                "UPDATE gallery_meta SET pack_id = %s, embedding_size = %s, schema_version = %s",
                (new_pin.pack_id, new_pin.embedding_size, SCHEMA_VERSION),
            )
            change.removed = sorted(int(row[0]) for row in deleted)
            change.reset = True
        if self._vector_index or (had_vector_index is not None and had_vector_index[0]):
            self._remake_vector_index(new_pin.embedding_size)

    def _remake_vector_index(self, embedding_size: int) -> None:
        """The HNSW index at the new size, after the repinning committed.

        Not inside it: the old row versions (old size) are still there until the commit, and building
        the index would evaluate its cast on them. A snapshot still open elsewhere can keep them alive
        a while longer; then the next start makes the index (``pin``) and the repinning still stands.
        """
        try:
            self._ensure_vector_index(embedding_size)
        except psycopg.errors.DataException as error:
            logger.warning(
                "the gallery was re-pinned, but its HNSW index could not be remade yet (%s); the next "
                "start makes it",
                error,
            )

    # ------------------------------------------------------------------ migration from another backend

    def import_batch(self, subjects: Sequence[Subject], faces: Sequence[ImportedFace]) -> None:
        """Copy rows from another gallery as they are (ids, index ids, timestamps), in one transaction.

        Logged as one change adding the faces. The index-id sequence then moves past the largest
        imported id, so faces enrolled later never collide with imported ones. Ids the source gave out
        to faces it deleted are not reserved here (they are in no batch): ``reserve_index_ids`` does.
        """
        pin = self._require_pin()
        rows = [_imported_row(face, pin) for face in faces]  # validated before the transaction
        try:
            with self._write() as (conn, change):
                _check_pin_unchanged(change, pin)
                _insert_imported(conn, subjects, rows)
                change.added = sorted(record.index_id for record, _, _ in rows)
        except psycopg.errors.UniqueViolation as error:
            raise GalleryError(
                f"the import clashes with rows already in the gallery at {self._url} "
                f"({error.diag.message_detail or error}); nothing was changed"
            ) from None

    _FACES_ID_SEQUENCE = "pg_get_serial_sequence('faces', 'index_id')::regclass"

    def last_index_id(self) -> int:
        """The largest index id the faces' sequence gave out or was moved past (0 for none): every face
        added later gets a larger one."""
        with self._reading() as conn:
            return int(
                _scalar(conn, f"SELECT coalesce(pg_sequence_last_value({self._FACES_ID_SEQUENCE}), 0)")
            )

    def reserve_index_ids(self, last_used: int) -> None:
        """Move the index-id sequence past ``last_used``, never back: faces added later get larger ids.

        For a copy of another gallery, whose deleted faces' ids must not be handed out again. A write
        like any other (the sequence bump, one logged change adding and removing nothing, so replicas
        only move on); none when the sequence is past ``last_used`` already (it only ever rises).
        setval is not undone by a rollback: a failed call may still have reserved the ids, which is
        harmless (ids are never reused, gaps are normal).
        """
        if last_used <= self.last_index_id():
            return
        with self._write() as (conn, _):
            conn.execute(
                "SELECT setval(s, GREATEST(coalesce(pg_sequence_last_value(s), 0), %s)) "
                f"FROM (SELECT {self._FACES_ID_SEQUENCE} AS s) AS q",
                (last_used,),
            )

    # ------------------------------------------------------------------ import (archives)

    def existing_ids(
        self, subject_ids: Collection[str], face_ids: Collection[str]
    ) -> tuple[set[str], set[str]]:
        with self._reading() as conn:
            subjects = conn.execute(
                "SELECT id FROM subjects WHERE id = ANY(%s::text[])", (list(subject_ids),)
            ).fetchall()
            faces = conn.execute(
                "SELECT id FROM faces WHERE id = ANY(%s::text[])", (list(face_ids),)
            ).fetchall()
        return {row[0] for row in subjects}, {row[0] for row in faces}

    _IMPORT_BATCH = 256  # faces per executemany inside the one transaction

    def import_gallery(self, subjects: Sequence[Subject], faces: Iterable[PortableFace]) -> list[FaceRecord]:
        """As ``GalleryStore.import_gallery``: one write transaction, logged as one change adding faces."""
        pin = self._require_pin()
        records: list[FaceRecord] = []
        try:
            with self._write() as (conn, change):
                _check_pin_unchanged(change, pin)
                with conn.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO subjects (id, name, name_key, metadata, created_at, updated_at) "
                        "VALUES (%s, %s, %s, %s, %s, %s)",
                        [
                            (
                                s.id,
                                s.name,
                                name_key(s.name),
                                Jsonb(dict(s.metadata)),
                                s.created_at,
                                s.updated_at,
                            )
                            for s in subjects
                        ],
                    )
                rest = iter(faces)
                while batch := list(itertools.islice(rest, self._IMPORT_BATCH)):
                    records += _insert_portable(conn, batch, pin)
                change.added = [record.index_id for record in records]
        except psycopg.errors.IntegrityError as error:  # a taken id, or a face whose subject is nowhere
            raise ImportClashError(
                f"the import clashes with the gallery at {self._url} "
                f"({error.diag.message_detail or error.diag.message_primary}); nothing was changed"
            ) from None
        return records


def _insert_portable(conn: Connection, faces: Sequence[PortableFace], pin: PackPin) -> list[FaceRecord]:
    rows = [_face_row(NewFace(f.embedding, f.det_score, f.quality, f.crop), pin) for f in faces]
    index_ids = _insert_returning_ids(
        conn,
        "INSERT INTO faces (id, subject_id, embedding, pack_id, det_score, quality, created_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING index_id",
        [
            (
                face.id,
                face.subject_id,
                row.embedding,
                pin.pack_id,
                row.det_score,
                Jsonb(row.quality),
                face.created_at,
            )
            for face, row in zip(faces, rows, strict=True)
        ],
    )
    _insert_crops(conn, [(i, row.crop) for i, row in zip(index_ids, rows, strict=True)])
    return [
        FaceRecord(
            face.id,
            index_id,
            face.subject_id,
            pin.pack_id,
            row.det_score,
            row.quality,
            face.created_at,
            row.crop is not None,
        )
        for face, row, index_id in zip(faces, rows, index_ids, strict=True)
    ]


class PostgresEmbeddingWriter:
    """Writes new embeddings inside ``PostgresGalleryStore.repinning`` (its transaction is open)."""

    def __init__(self, conn: Connection, pin: PackPin) -> None:
        self._conn = conn
        self._pin = pin
        self.written = 0

    def write(self, index_ids: Sequence[int], embeddings: FloatArray) -> None:
        matrix = np.asarray(embeddings, dtype=np.float32)
        if matrix.shape != (len(index_ids), self._pin.embedding_size) or not np.all(np.isfinite(matrix)):
            raise EmbeddingSizeError(
                f"need ({len(index_ids)}, {self._pin.embedding_size}) finite embeddings, got {matrix.shape}"
            )
        with self._conn.cursor() as cursor:
            cursor.executemany(
                "UPDATE faces SET embedding = %s, pack_id = %s WHERE index_id = %s",
                [(row, self._pin.pack_id, int(i)) for i, row in zip(index_ids, matrix, strict=True)],
            )
            updated = cursor.rowcount  # executemany's rowcount: the rows all its statements changed
        if updated != len(index_ids):
            raise GalleryError(f"{len(index_ids) - updated} of the re-embedded faces no longer exist")
        self.written += len(index_ids)


# ---------------------------------------------------------------------- rows in and out


@dataclass(frozen=True)
class _FaceRow:
    """A new face, validated and encoded before its transaction starts (a bad face fails fast)."""

    face_id: str
    embedding: FloatArray
    det_score: float
    quality: dict[str, float]
    crop: tuple[bytes, Jsonb] | None


def _face_row(face: NewFace, pin: PackPin) -> _FaceRow:
    embedding = _checked_embedding(face.embedding, pin)
    return _FaceRow(
        str(uuid.uuid4()),
        embedding,
        float(face.det_score),
        {key: float(value) for key, value in face.quality.items()},
        _encoded_crop(face.crop),
    )


_ImportedRow = tuple[FaceRecord, FloatArray, tuple[bytes, Jsonb] | None]


def _imported_row(face: ImportedFace, pin: PackPin) -> _ImportedRow:
    if face.record.pack_id != pin.pack_id:
        raise GalleryError(
            f"face {face.record.id} was made with pack {face.record.pack_id!r}, but the gallery is pinned "
            f"to {pin.pack_id!r}: pin the gallery to the source's pack before importing"
        )
    return face.record, _checked_embedding(face.embedding, pin), _encoded_crop(face.crop)


def _checked_embedding(values: FloatArray, pin: PackPin) -> FloatArray:
    embedding = np.asarray(values, dtype=np.float32)
    if embedding.shape != (pin.embedding_size,):
        raise EmbeddingSizeError(
            f"embedding of shape {embedding.shape}; the gallery holds {pin.embedding_size}-d embeddings"
        )
    if not np.all(np.isfinite(embedding)):
        raise EmbeddingSizeError("embedding has non-finite values")
    return embedding


def _encoded_crop(crop: StoredCrop | None) -> tuple[bytes, Jsonb] | None:
    if crop is None:
        return None
    landmarks = np.asarray(crop.landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"crop landmarks must be (5, 2), got {landmarks.shape}")
    return crop.png_bytes(), Jsonb(landmarks.tolist())


def _insert_imported(conn: Connection, subjects: Sequence[Subject], rows: Sequence[_ImportedRow]) -> None:
    """Insert imported subjects and faces with their own ids, then move the index-id sequence past them."""
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO subjects (id, name, name_key, metadata, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (s.id, s.name, name_key(s.name), Jsonb(dict(s.metadata)), s.created_at, s.updated_at)
                for s in subjects
            ],
        )
        cursor.executemany(
            "INSERT INTO faces (index_id, id, subject_id, embedding, pack_id, det_score, quality, "
            "created_at) OVERRIDING SYSTEM VALUE VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (r.index_id, r.id, r.subject_id, e, r.pack_id, r.det_score, Jsonb(r.quality), r.created_at)
                for r, e, _ in rows
            ],
        )
    _insert_crops(conn, [(record.index_id, crop) for record, _, crop in rows])
    if rows:  # never lower it: ids above the imported ones may have been used (and deleted) already
        conn.execute(
            "SELECT setval(s, GREATEST(coalesce(pg_sequence_last_value(s), 0), %s)) "
            "FROM (SELECT pg_get_serial_sequence('faces', 'index_id')::regclass AS s) AS q",
            (max(record.index_id for record, _, _ in rows),),
        )


def _check_pin_unchanged(change: _Change, pin: PackPin) -> None:
    """The rows were checked against ``pin``: refuse them if the gallery was re-pinned meanwhile."""
    if (change.pack_id, change.embedding_size) != (pin.pack_id, pin.embedding_size):
        raise GalleryError("the gallery was re-pinned to another pack meanwhile; nothing was changed")


def _insert_returning_ids(conn: Connection, query: str, params: Sequence[Sequence[object]]) -> list[int]:
    ids: list[int] = []
    if not params:
        return ids
    with conn.cursor() as cursor:
        cursor.executemany(query, params, returning=True)
        for result in cursor.results():
            row = result.fetchone()
            if row is not None:
                ids.append(int(row[0]))
    if len(ids) != len(params):
        raise GalleryError(f"inserted {len(params)} faces but got {len(ids)} index ids back")
    return ids


def _insert_crops(conn: Connection, crops: Sequence[tuple[int, tuple[bytes, Jsonb] | None]]) -> None:
    rows = [(index_id, *crop) for index_id, crop in crops if crop is not None]
    if rows:
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO face_crops (index_id, png, landmarks) VALUES (%s, %s, %s)", rows)


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def _scalar(conn: Connection, query: str) -> Any:
    row = conn.execute(query).fetchone()
    if row is None:  # an aggregate always returns its one row
        raise GalleryError(f"{query!r} returned no row")
    return row[0]


def _bad_rows(conn: Connection, pin: PackPin) -> list[BadRow]:
    rows = conn.execute(
        "SELECT index_id, vector_dims(embedding) FROM faces WHERE vector_dims(embedding) <> %s "
        "ORDER BY index_id",
        (pin.embedding_size,),
    ).fetchall()
    return [
        BadRow(int(index_id), f"embedding of {dims} values, need {pin.embedding_size}")
        for index_id, dims in rows
    ]


def _subject(row: tuple[Any, ...]) -> Subject:
    _, subject_id, name, metadata, created_at, updated_at, face_count, duplicate = row
    return Subject(
        subject_id, name, stored_metadata(metadata), created_at, updated_at, int(face_count), bool(duplicate)
    )


def _other_with_key(conn: Connection, key: str, subject_id: str | None) -> str | None:
    """The id of a subject other than ``subject_id`` whose name has ``key``, if there is one."""
    row = conn.execute(
        "SELECT id FROM subjects WHERE name_key = %s AND id IS DISTINCT FROM %s ORDER BY seq LIMIT 1",
        (key, subject_id),
    ).fetchone()
    return None if row is None else str(row[0])


def _refuse_taken_name(conn: Connection, name: str, key: str, subject_id: str | None = None) -> None:
    other = _other_with_key(conn, key, subject_id)
    if other is not None:
        raise DuplicateNameError(name, other)


def _filter_sql(where: SubjectFilter) -> tuple[str, list[object]]:
    """`` AND ...`` conditions on subjects ``s`` for ``where``, and their parameters (in order).

    A value criterion is JSONB containment of ``{key: candidate}`` for each candidate: numbers compare
    as numerics (42 = 42.0), strings exactly. Containment would also find a string inside an array
    value, so array values are left out (SQLite's rule: arrays never match).
    """
    conditions: list[str] = []
    params: list[object] = []
    if where.name_prefix is not None:
        conditions.append(f"s.name_key LIKE %s ESCAPE '{LIKE_ESCAPE}'")
        params.append(like_prefix(where.name_prefix))
    if where.metadata_key is not None:
        conditions.append("jsonb_typeof(s.metadata) = 'object' AND s.metadata ? %s")
        params.append(where.metadata_key)
        candidates = where.value_candidates()
        if candidates:
            conditions.append(f"({' OR '.join(['s.metadata @> %s'] * len(candidates))})")
            params.extend(Jsonb({where.metadata_key: candidate}) for candidate in candidates)
            conditions.append("jsonb_typeof(s.metadata -> %s) <> 'array'")
            params.append(where.metadata_key)
    return "".join(f" AND {condition}" for condition in conditions), params


def _face_record(row: tuple[Any, ...]) -> FaceRecord:
    face_id, index_id, subject_id, pack_id, det_score, quality, created_at, has_crop = row
    return FaceRecord(
        face_id,
        int(index_id),
        subject_id,
        pack_id,
        float(det_score),
        dict(quality),
        created_at,
        bool(has_crop),
    )


def _crop(png: bytes, landmarks: object) -> StoredCrop:
    if isinstance(landmarks, str):  # JSONB loads as Python values; a text copy still decodes
        landmarks = json.loads(landmarks)
    data = bytes(png)
    return StoredCrop(decode_png(data), np.asarray(landmarks, dtype=np.float32), png=data)


def _redacted(url: str) -> str:
    """``url`` with its password hidden, whether in the userinfo, a query parameter or a keyword DSN."""
    return _without_password(url, url)


def _without_password(text: str, url: str) -> str:
    """``text`` (a URL, a message naming one) with ``url``'s password hidden wherever it appears."""
    redacted = redact_url(text)
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:  # not a parseable conninfo: the regex redaction is all there is
        password = None
    return redacted.replace(str(password), "***") if password else redacted


# ---------------------------------------------------------------------- opener


def open_postgres_store(data_dir: Path, options: StoreOptions, *, must_exist: bool = False) -> OpenedStore:
    """Migrate the database, open its pool and store (and change feed). No lock: replicas share it.

    ``data_dir`` is not used: the gallery lives in the database. ``must_exist``: refuse a database
    holding no gallery (offline commands must not create one by accident).
    """
    del data_dir
    url = options.database_url
    if not url:
        raise GalleryError("the postgresql gallery backend needs a database URL (FACE_DATABASE_URL)")
    with _opening(url):
        if must_exist:
            _require_gallery_schema(url, options.timeout_s)
        apply_migrations(url, COMPONENT, MIGRATIONS, timeout_s=options.timeout_s)
        pool = open_pool(
            url,
            PoolOptions(options.pool_min_size, options.pool_max_size, options.timeout_s),
            name="face-gallery",
            vectors=True,
        )
    store = PostgresGalleryStore(
        pool,
        url,
        vector_index=options.vector_index,
        hnsw_m=options.hnsw_m,
        hnsw_ef_construction=options.hnsw_ef_construction,
    )
    try:
        store.fill_name_keys()
        if must_exist and store.pinned_pack() is None:
            raise GalleryError(f"the gallery at {store.url} has no pack pin yet: nothing was ever enrolled")
        # FACE_SEARCH=pgvector: the database searches (HNSW), so replicas build no index of their own.
        in_database_search = (
            partial(PgvectorIndex, pool, ef_search=options.ef_search) if options.vector_index else None
        )
        return OpenedStore(
            store, lock=None, feed=PostgresChangeFeed(pool, url), in_database_search=in_database_search
        )
    except BaseException:
        store.close()
        raise


@contextmanager
def _opening(url: str) -> Iterator[None]:
    """The opener's failures as gallery errors: unreachable → StoreUnavailableError, too new → schema."""
    try:
        yield
    except DatabaseUnavailableError as error:
        raise StoreUnavailableError(_without_password(str(error), url)) from None
    except SchemaTooNewError as error:
        raise SchemaVersionError(str(error)) from None


def _require_gallery_schema(url: str, timeout_s: float) -> None:
    with unavailable_as_error(url), psycopg.connect(url, connect_timeout=max(1, round(timeout_s))) as conn:
        ledger = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if ledger is None or not ledger[0] or applied_version(conn, COMPONENT) == 0:
            raise GalleryError(f"no gallery in the database at {_redacted(url)}")
