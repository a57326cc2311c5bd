"""SqliteGalleryStore: the gallery store in one SQLite file (WAL, synchronous=FULL).

Durability: in WAL mode with ``synchronous=FULL`` SQLite fsyncs the write-ahead log before a commit
returns, so a face whose ``add_faces`` call returned survives a process crash and a power loss.
(``NORMAL`` would be faster but may lose the last commits on power loss.)

``index_id`` is ``INTEGER PRIMARY KEY AUTOINCREMENT``: AUTOINCREMENT never reuses an id.
``open_sqlite_store`` is this backend's opener (see ``service/gallery/backends.py``): it takes the
data dir's lock, then opens ``<data_dir>/gallery.sqlite3``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.gallery.data_dir_lock import DataDirLock
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
    GalleryCorruptError,
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
    Subject,
    SubjectFilter,
    SubjectNotFoundError,
    SubjectPage,
    decode_png,
    is_storage_full,
    like_prefix,
    name_key,
)
from service.pipeline.types import FloatArray
from service.private_files import ensure_private_file
from service.sqlite_text import lenient_text

GALLERY_FILE = "gallery.sqlite3"
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    schema_version INTEGER NOT NULL,
    pack_id TEXT NOT NULL,
    embedding_size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS subjects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- creation order: the stable pagination key
    id TEXT NOT NULL UNIQUE,                 -- uuid4, the public id
    name TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',     -- JSON object
    -- store.name_key(name), written with the name (NULL: filled in at the next open, see
    -- _NAME_KEY_COLUMN). NOCASE lets LIKE use the index; keys are case-folded already, so it
    -- compares them as BINARY would.
    name_key TEXT COLLATE NOCASE,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    index_id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the FAISS id; never reused
    id TEXT NOT NULL UNIQUE,                     -- uuid4, the public id
    subject_id TEXT NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL,                     -- float32 little-endian, embedding_size values
    pack_id TEXT NOT NULL,
    det_score REAL NOT NULL,
    quality TEXT NOT NULL DEFAULT '{}',          -- JSON object
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS faces_by_subject ON faces(subject_id, index_id);
-- Crops live apart from faces so that re-embedding (which rewrites every embedding) does not
-- rewrite every crop, and listing faces never pages through image data.
CREATE TABLE IF NOT EXISTS face_crops (
    index_id INTEGER PRIMARY KEY REFERENCES faces(index_id) ON DELETE CASCADE,
    png BLOB NOT NULL,                           -- the crop, PNG (RGB)
    landmarks TEXT NOT NULL                      -- JSON [[x, y] * 5]: the face's 5 points in the crop
);
"""

# Galleries made before name search lack subjects.name_key: added at open, then filled in from Python
# (store.name_key), which also fills the keys of rows written without one (a salvage, older code).
# No schema-version step: older builds read and write such a file unchanged.
_NAME_KEY_COLUMN = "ALTER TABLE subjects ADD COLUMN name_key TEXT COLLATE NOCASE"
_NAME_KEY_INDEX = "CREATE INDEX IF NOT EXISTS subjects_by_name_key ON subjects(name_key)"

# Created only by a repair (`face-service check --repair`): faces moved out of the service's way.
_QUARANTINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantined_faces (
    qid INTEGER PRIMARY KEY AUTOINCREMENT,
    reason TEXT NOT NULL,
    quarantined_at TEXT NOT NULL,
    index_id INTEGER, id TEXT, subject_id TEXT, embedding BLOB, pack_id TEXT, det_score REAL,
    quality TEXT, created_at TEXT, png BLOB, landmarks TEXT
)
"""


class SqliteGalleryStore:
    """SQLite access for the gallery. Thread-safe: one connection, used under an internal lock."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.RLock()
        if self._path.parent.is_dir():
            ensure_private_file(self._path)  # 0600 before SQLite creates it (and its -wal, -shm)
        try:
            # isolation_level=None: no implicit transactions; every write is an explicit BEGIN…COMMIT.
            self._conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
            )
        except sqlite3.Error as error:  # e.g. a directory in the file's place
            raise GalleryCorruptError(self._path, str(error)) from None
        self._conn.row_factory = sqlite3.Row
        # A TEXT value that isn't UTF-8 (a hand edit, another tool) is read with its bad bytes
        # escaped instead of failing every read of that row; valid UTF-8 reads unchanged.
        self._conn.text_factory = lenient_text
        try:
            self._configure()
            self._create_schema()
        except sqlite3.DatabaseError as error:  # not a database (garbage, a zeroed header)
            self._conn.close()
            if is_storage_full(error):
                raise
            raise GalleryCorruptError(self._path, str(error)) from None
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ setup

    def _configure(self) -> None:
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise GalleryError(f"could not put {self._path} in WAL mode (got {mode!r})")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def _create_schema(self) -> None:
        with self._lock:
            # executescript commits on its own; the statements are idempotent (IF NOT EXISTS).
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT schema_version FROM meta").fetchone()
            if row is not None and row[0] > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self._path} has gallery schema version {row[0]}; this service understands "
                    f"up to {SCHEMA_VERSION}: upgrade the service"
                )
            self._add_name_keys()

    def _add_name_keys(self) -> None:
        """The name_key column, its index, and a key for every row lacking one (see _NAME_KEY_COLUMN).

        Not a change of content: the change sequence does not move.
        """
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(subjects)")}
        if "name_key" not in columns:
            self._conn.execute(_NAME_KEY_COLUMN)
        self._conn.execute(_NAME_KEY_INDEX)
        missing = self._conn.execute("SELECT seq, name FROM subjects WHERE name_key IS NULL").fetchall()
        if missing:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "UPDATE subjects SET name_key = ? WHERE seq = ?",
                    [(name_key(name), seq) for seq, name in missing],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @property
    def path(self) -> Path:
        return self._path

    def damaged(self, why: str) -> GalleryCorruptError:
        return GalleryCorruptError(self._path, why)

    @contextmanager
    def _unreadable_as_damage(self) -> Iterator[None]:
        """Pages that cannot be read (a truncated file) are damage; a full disk stays what it is."""
        try:
            yield
        except sqlite3.DatabaseError as error:
            if is_storage_full(error):
                raise
            raise GalleryCorruptError(self._path, str(error)) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception (a failed COMMIT too): all or nothing."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._bump_change_seq()
                self._conn.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (a full disk does): a second ROLLBACK would
                # raise and hide the real error, and an open one would block every later write.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    # The change sequence lives in the database header's user_version (a 32-bit integer SQLite keeps
    # for applications): written inside the transaction, so it commits or rolls back with the change,
    # and no table or schema version changes for it. Galleries written before it start at 0.
    def _bump_change_seq(self) -> None:
        current = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        self._conn.execute(f"PRAGMA user_version = {current + 1}")

    def change_seq(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------------ integrity

    def quick_check(self) -> str | None:
        """None when SQLite's quick_check passes, else its first complaint."""
        with self._lock:
            try:
                verdict = str(self._conn.execute("PRAGMA quick_check").fetchone()[0])
            except sqlite3.DatabaseError as error:
                return str(error)
        return None if verdict == "ok" else verdict

    def bad_rows(self) -> list[BadRow]:
        """Faces that cannot be searched: wrong-length or non-finite embeddings, or no subject."""
        return self.searchable_embeddings()[2]

    def searchable_embeddings(self) -> tuple[IntArray, FloatArray, list[BadRow]]:
        """(index_ids, embeddings) of every searchable face, and the faces that are not, in one read."""
        with self._unreadable_as_damage():
            return self._searchable_embeddings()

    def _searchable_embeddings(self) -> tuple[IntArray, FloatArray, list[BadRow]]:
        pin = self._require_pin()
        size = 4 * pin.embedding_size
        with self._lock:
            rows = self._conn.execute(
                "SELECT f.index_id, f.embedding, s.id IS NULL AS orphan FROM faces f "
                "LEFT JOIN subjects s ON s.id = f.subject_id ORDER BY f.index_id"
            ).fetchall()
        bad: list[BadRow] = []
        sized_ids: list[int] = []
        blobs: list[bytes] = []
        orphan: list[bool] = []
        for index_id, blob, no_subject in rows:
            if isinstance(blob, bytes) and len(blob) == size:
                sized_ids.append(index_id)
                blobs.append(blob)
                orphan.append(bool(no_subject))
            else:
                length = len(blob) if isinstance(blob, bytes | str) else type(blob).__name__
                bad.append(BadRow(index_id, f"embedding of {length} bytes, need {size}"))
        ids = np.asarray(sized_ids, dtype=np.int64)
        matrix = _matrix(blobs, pin.embedding_size)
        finite = np.isfinite(matrix).all(axis=1)  # one vectorised pass over every embedding
        orphaned = np.asarray(orphan, dtype=bool) & finite
        bad += [BadRow(int(i), "embedding has NaN or infinite values") for i in ids[~finite]]
        bad += [BadRow(int(i), "its subject does not exist") for i in ids[orphaned]]
        bad.sort(key=lambda row: row.index_id)
        keep = finite & ~orphaned
        return ids[keep], matrix[keep], bad

    def quarantine(self, bad: Sequence[BadRow]) -> int:
        """Move ``bad`` faces (with their crops) into ``quarantined_faces``, in one transaction.

        Nothing is deleted: the rows stay in the file, out of the service's way, for an operator.
        """
        if not bad:
            return 0
        now = utc_timestamp()
        with self._transaction() as conn:
            conn.execute(_QUARANTINE_SCHEMA)
            for row in bad:
                conn.execute(
                    "INSERT INTO quarantined_faces (reason, quarantined_at, index_id, id, subject_id, "
                    "embedding, pack_id, det_score, quality, created_at, png, landmarks) "
                    "SELECT ?, ?, f.index_id, f.id, f.subject_id, f.embedding, f.pack_id, f.det_score, "
                    "f.quality, f.created_at, c.png, c.landmarks FROM faces f "
                    "LEFT JOIN face_crops c ON c.index_id = f.index_id WHERE f.index_id = ?",
                    (row.reason, now, row.index_id),
                )
                conn.execute("DELETE FROM face_crops WHERE index_id = ?", (row.index_id,))
                conn.execute("DELETE FROM faces WHERE index_id = ?", (row.index_id,))
        return len(bad)

    def quarantined_count(self) -> int:
        with self._lock:
            exists = self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'quarantined_faces'"
            ).fetchone()
            if exists is None:
                return 0
            return int(self._conn.execute("SELECT COUNT(*) FROM quarantined_faces").fetchone()[0])

    # ------------------------------------------------------------------ pack pin

    def pinned_pack(self) -> PackPin | None:
        with self._lock:
            row = self._conn.execute("SELECT schema_version, pack_id, embedding_size FROM meta").fetchone()
        if row is None:
            return None
        return PackPin(pack_id=row["pack_id"], embedding_size=row["embedding_size"], schema_version=row[0])

    def pin(self, pack_id: str, embedding_size: int) -> PackPin:
        """Pin a new gallery to ``pack_id``, or check that an existing one already is.

        Only an empty gallery is pinned: faces without a pin come from an unknown pack.
        """
        with self._unreadable_as_damage():
            return self._pin(pack_id, embedding_size)

    def _pin(self, pack_id: str, embedding_size: int) -> PackPin:
        with self._transaction() as conn:
            row = conn.execute("SELECT pack_id, embedding_size FROM meta").fetchone()
            if row is None:
                faces = int(conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0])
                if faces:
                    raise PackPinMissingError(self._path, faces)
                conn.execute(
                    "INSERT INTO meta (singleton, schema_version, pack_id, embedding_size) "
                    "VALUES (1, ?, ?, ?)",
                    (SCHEMA_VERSION, pack_id, embedding_size),
                )
                return PackPin(pack_id, embedding_size)
        if row["pack_id"] != pack_id:
            raise PackMismatchError(self._path, row["pack_id"], pack_id)
        if row["embedding_size"] != embedding_size:
            raise PackMismatchError(
                self._path,
                row["pack_id"],
                pack_id,
                f" (same id, but {row['embedding_size']}-d stored vs {embedding_size}-d now: "
                "the pack changed)",
            )
        return PackPin(pack_id, embedding_size)

    def _require_pin(self) -> PackPin:
        pin = self.pinned_pack()
        if pin is None:
            raise GalleryError(f"{self._path} is not pinned to a pack yet (call pin() first)")
        return pin

    # ------------------------------------------------------------------ subjects

    def create_subject(
        self, name: str, metadata: Mapping[str, Any] | None = None, *, unique_name: bool = False
    ) -> Subject:
        subject_id = str(uuid.uuid4())
        now = utc_timestamp()
        key = name_key(name)
        # BEGIN IMMEDIATE takes the write lock first: no other writer can slip in between the check
        # and the insert (this process's writers queue on self._lock, other processes on the file).
        with self._transaction() as conn:
            if unique_name:
                self._refuse_taken_name(conn, name, key)
            conn.execute(
                "INSERT INTO subjects (id, name, name_key, metadata, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (subject_id, name, key, json.dumps(dict(metadata or {})), now, now),
            )
            duplicate = self._other_with_key(conn, key, subject_id) is not None
        return Subject(subject_id, name, dict(metadata or {}), now, now, 0, duplicate)

    @staticmethod
    def _other_with_key(conn: sqlite3.Connection, key: str, subject_id: str | None) -> str | None:
        """The id of a subject other than ``subject_id`` whose name has ``key``, if there is one."""
        row = conn.execute(
            "SELECT id FROM subjects WHERE name_key = ? AND id IS NOT ? ORDER BY seq LIMIT 1",
            (key, subject_id),
        ).fetchone()
        return None if row is None else str(row[0])

    def _refuse_taken_name(
        self, conn: sqlite3.Connection, name: str, key: str, subject_id: str | None = None
    ) -> None:
        other = self._other_with_key(conn, key, subject_id)
        if other is not None:
            raise DuplicateNameError(name, other)

    _SUBJECT_COLUMNS = (
        "s.seq, s.id, s.name, s.metadata, s.created_at, s.updated_at, "
        "(SELECT COUNT(*) FROM faces f WHERE f.subject_id = s.id) AS face_count, "
        "EXISTS (SELECT 1 FROM subjects o WHERE o.name_key = s.name_key AND o.seq <> s.seq) "
        "AS duplicate_name"
    )

    def get_subject(self, subject_id: str) -> Subject:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._SUBJECT_COLUMNS} FROM subjects s WHERE s.id = ?", (subject_id,)
            ).fetchone()
        if row is None:
            raise SubjectNotFoundError(subject_id)
        return _subject(row)

    def list_subjects(
        self, cursor: str | None = None, limit: int = 50, where: SubjectFilter | None = None
    ) -> SubjectPage:
        """Subjects in creation order, those ``where`` keeps; pass ``next_cursor`` back for the next page.

        A name prefix is a LIKE on the NOCASE-indexed name_key (an index range); metadata criteria
        read each candidate row's JSON (a scan of the rows the other criteria leave).
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        after = decode_cursor(cursor) if cursor else 0
        conditions, params = _filter_sql(where or SubjectFilter())
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {self._SUBJECT_COLUMNS} FROM subjects s WHERE s.seq > ?{conditions} "
                "ORDER BY s.seq LIMIT ?",
                (after, *params, limit + 1),
            ).fetchall()
        items = [_subject(row) for row in rows[:limit]]
        next_cursor = encode_cursor(rows[limit - 1]["seq"]) if len(rows) > limit else None
        return SubjectPage(items, next_cursor)

    def update_subject(
        self,
        subject_id: str,
        *,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        unique_name: bool = False,
    ) -> Subject:
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT name, name_key, metadata FROM subjects WHERE id = ?", (subject_id,)
            ).fetchone()
            if row is None:
                raise SubjectNotFoundError(subject_id)
            if name is not None and unique_name:
                self._refuse_taken_name(conn, name, name_key(name), subject_id)
            conn.execute(
                "UPDATE subjects SET name = ?, name_key = ?, metadata = ?, updated_at = ? WHERE id = ?",
                (
                    row["name"] if name is None else name,
                    row["name_key"] if name is None else name_key(name),
                    row["metadata"] if metadata is None else json.dumps(dict(metadata)),
                    utc_timestamp(),
                    subject_id,
                ),
            )
        return self.get_subject(subject_id)

    def delete_subject(self, subject_id: str) -> list[FaceRef]:
        """Delete a subject and (cascade) its faces; returns the deleted faces."""
        with self._transaction() as conn:
            faces = [
                FaceRef(row["id"], row["index_id"])
                for row in conn.execute("SELECT id, index_id FROM faces WHERE subject_id = ?", (subject_id,))
            ]
            if conn.execute("DELETE FROM subjects WHERE id = ?", (subject_id,)).rowcount == 0:
                raise SubjectNotFoundError(subject_id)
        return faces

    def merge_subject(self, source_id: str, target_id: str) -> Subject:
        """Move the source's faces to the target and delete the source, in one transaction.

        The metadata rule (see ``GalleryStore.merge_subject``): the target's top-level keys win, keys
        only the source has are added. Crops are keyed by index id, so they follow their faces.
        """
        if source_id == target_id:
            raise ValueError(f"cannot merge subject {source_id!r} into itself")
        with self._transaction() as conn:
            source = conn.execute("SELECT metadata FROM subjects WHERE id = ?", (source_id,)).fetchone()
            if source is None:
                raise SubjectNotFoundError(source_id)
            target = conn.execute("SELECT metadata FROM subjects WHERE id = ?", (target_id,)).fetchone()
            if target is None:
                raise SubjectNotFoundError(target_id)
            conn.execute("UPDATE faces SET subject_id = ? WHERE subject_id = ?", (target_id, source_id))
            conn.execute(
                "UPDATE subjects SET metadata = ?, updated_at = ? WHERE id = ?",
                (_merged_metadata(source["metadata"], target["metadata"]), utc_timestamp(), target_id),
            )
            conn.execute("DELETE FROM subjects WHERE id = ?", (source_id,))
        return self.get_subject(target_id)

    # ------------------------------------------------------------------ faces

    def add_faces(self, subject_id: str, faces: Sequence[NewFace]) -> list[FaceRecord]:
        """Add all ``faces`` in one transaction: after an error, none of them is stored."""
        pin = self._require_pin()
        rows = [self._face_row(face, pin) for face in faces]
        now = utc_timestamp()
        records: list[FaceRecord] = []
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM subjects WHERE id = ?", (subject_id,)).fetchone() is None:
                raise SubjectNotFoundError(subject_id)
            for face, (face_id, blob, quality_json, crop) in zip(faces, rows, strict=True):
                row = _FaceRow(face_id, subject_id, blob, face.det_score, quality_json, now, crop)
                records.append(_insert_face(conn, row, pin))
            conn.execute("UPDATE subjects SET updated_at = ? WHERE id = ?", (now, subject_id))
        return records

    def _face_row(self, face: NewFace, pin: PackPin) -> tuple[str, bytes, str, tuple[bytes, str] | None]:
        # Validated and encoded before the transaction starts: a bad face fails fast, nothing held.
        embedding = np.asarray(face.embedding, dtype="<f4")
        if embedding.shape != (pin.embedding_size,):
            raise EmbeddingSizeError(
                f"embedding of shape {embedding.shape}; the gallery holds {pin.embedding_size}-d embeddings"
            )
        if not np.all(np.isfinite(embedding)):
            raise EmbeddingSizeError("embedding has non-finite values")
        quality = {key: float(value) for key, value in face.quality.items()}
        crop: tuple[bytes, str] | None = None
        if face.crop is not None:
            landmarks = np.asarray(face.crop.landmarks, dtype=np.float64)
            if landmarks.shape != (5, 2):
                raise ValueError(f"crop landmarks must be (5, 2), got {landmarks.shape}")
            crop = (face.crop.png_bytes(), json.dumps(landmarks.tolist()))
        return str(uuid.uuid4()), embedding.tobytes(), json.dumps(quality), crop

    _FACE_COLUMNS = (
        "f.id, f.index_id, f.subject_id, f.pack_id, f.det_score, f.quality, f.created_at, "
        "EXISTS (SELECT 1 FROM face_crops c WHERE c.index_id = f.index_id) AS has_crop"
    )

    def list_faces(self, subject_id: str) -> list[FaceRecord]:
        with self._lock:
            if self._conn.execute("SELECT 1 FROM subjects WHERE id = ?", (subject_id,)).fetchone() is None:
                raise SubjectNotFoundError(subject_id)
            rows = self._conn.execute(
                f"SELECT {self._FACE_COLUMNS} FROM faces f WHERE f.subject_id = ? ORDER BY f.index_id",
                (subject_id,),
            ).fetchall()
        return [_face_record(row) for row in rows]

    def get_face(self, face_id: str) -> FaceRecord:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._FACE_COLUMNS} FROM faces f WHERE f.id = ?", (face_id,)
            ).fetchone()
        if row is None:
            raise FaceNotFoundError(face_id)
        return _face_record(row)

    def get_crop(self, face_id: str) -> StoredCrop | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT c.png, c.landmarks FROM faces f LEFT JOIN face_crops c ON c.index_id = f.index_id "
                "WHERE f.id = ?",
                (face_id,),
            ).fetchone()
        if row is None:
            raise FaceNotFoundError(face_id)
        if row["png"] is None:
            return None
        return _crop(row["png"], row["landmarks"])

    def delete_face(self, face_id: str, subject_id: str | None = None) -> FaceRef:
        """Delete one face (of ``subject_id`` when given); raises FaceNotFoundError otherwise."""
        with self._transaction() as conn:
            row = conn.execute("SELECT index_id, subject_id FROM faces WHERE id = ?", (face_id,)).fetchone()
            if row is None or (subject_id is not None and row["subject_id"] != subject_id):
                raise FaceNotFoundError(face_id)
            conn.execute("DELETE FROM faces WHERE id = ?", (face_id,))
            conn.execute(
                "UPDATE subjects SET updated_at = ? WHERE id = ?", (utc_timestamp(), row["subject_id"])
            )
        return FaceRef(face_id, row["index_id"])

    def move_face(self, face_id: str, subject_id: str) -> FaceRecord:
        """Make one face (its crop follows, keyed by index id) ``subject_id``'s, in one transaction."""
        with self._transaction() as conn:
            row = conn.execute("SELECT subject_id FROM faces WHERE id = ?", (face_id,)).fetchone()
            if row is None:
                raise FaceNotFoundError(face_id)
            if conn.execute("SELECT 1 FROM subjects WHERE id = ?", (subject_id,)).fetchone() is None:
                raise SubjectNotFoundError(subject_id)
            conn.execute("UPDATE faces SET subject_id = ? WHERE id = ?", (subject_id, face_id))
            conn.execute(
                "UPDATE subjects SET updated_at = ? WHERE id IN (?, ?)",
                (utc_timestamp(), row["subject_id"], subject_id),
            )
        return self.get_face(face_id)

    def subject_embeddings(self, subject_id: str) -> FloatArray:
        """(n, D) embeddings of one subject's faces; raises SubjectNotFoundError."""
        pin = self._require_pin()
        with self._lock:
            if self._conn.execute("SELECT 1 FROM subjects WHERE id = ?", (subject_id,)).fetchone() is None:
                raise SubjectNotFoundError(subject_id)
            blobs = [
                row[0]
                for row in self._conn.execute(
                    "SELECT embedding FROM faces WHERE subject_id = ? ORDER BY index_id", (subject_id,)
                )
            ]
        return _matrix(blobs, pin.embedding_size)

    def all_embeddings(self) -> tuple[IntArray, FloatArray]:
        """Every face's (index_id, embedding), for rebuilding the index."""
        pin = self._require_pin()
        with self._lock:
            rows = self._conn.execute("SELECT index_id, embedding FROM faces ORDER BY index_id").fetchall()
        ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        return ids, _matrix([row[1] for row in rows], pin.embedding_size)

    def owners(self, index_ids: Sequence[int]) -> dict[int, FaceOwner]:
        """The face and subject behind each FAISS id still present (deleted ones are absent)."""
        unique = sorted({int(i) for i in index_ids if i >= 0})
        owners: dict[int, FaceOwner] = {}
        with self._lock:
            for start in range(0, len(unique), 500):  # keep under SQLite's bound-parameter limit
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for row in self._conn.execute(
                    "SELECT f.index_id, f.id, f.subject_id, s.name FROM faces f "
                    f"JOIN subjects s ON s.id = f.subject_id WHERE f.index_id IN ({marks})",
                    chunk,
                ):
                    owners[row[0]] = FaceOwner(row[0], row[1], row[2], row[3])
        return owners

    def counts(self) -> GalleryCounts:
        with self._lock:
            subjects = self._conn.execute("SELECT COUNT(*) FROM subjects").fetchone()[0]
            faces = self._conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
        return GalleryCounts(int(subjects), int(faces))

    def last_index_id(self) -> int:
        """The largest index id this gallery ever gave out, deleted faces' too (0 for none).

        AUTOINCREMENT keeps it in ``sqlite_sequence``; a copy of the gallery elsewhere must not hand
        those ids out again (``face-service migrate`` reserves them in the target).
        """
        with self._lock:
            given = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'faces'").fetchone()
            present = self._conn.execute("SELECT MAX(index_id) FROM faces").fetchone()[0]
        return max(int(given[0]) if given is not None else 0, int(present or 0))

    # ------------------------------------------------------------------ re-embedding

    def iter_crops(self, batch_size: int = 256) -> Iterator[list[tuple[int, StoredCrop]]]:
        """Batches of (index_id, crop) for every face that has a crop, in index_id order."""
        last = 0
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT index_id, png, landmarks FROM face_crops "
                    "WHERE index_id > ? ORDER BY index_id LIMIT ?",
                    (last, batch_size),
                ).fetchall()
            if not rows:
                return
            yield [(row[0], _crop(row[1], row[2])) for row in rows]
            last = rows[-1][0]

    def faces_without_crop(self) -> list[FaceRef]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT f.id, f.index_id FROM faces f LEFT JOIN face_crops c ON c.index_id = f.index_id "
                "WHERE c.index_id IS NULL ORDER BY f.index_id"
            ).fetchall()
        return [FaceRef(row[0], row[1]) for row in rows]

    @contextmanager
    def repinning(
        self, new_pin: PackPin, *, delete_unconverted: bool = False
    ) -> Iterator[SqliteEmbeddingWriter]:
        """Switch the gallery to another pack in ONE transaction (all or nothing).

        The block writes every face's new embedding through the yielded writer; at its end the pin
        moves to ``new_pin``. Faces left unconverted make the switch fail (rolled back), or are
        deleted when ``delete_unconverted``. Reads inside the block still see the old embeddings
        of faces not yet written.
        """
        old = self._require_pin()
        if old.pack_id == new_pin.pack_id:
            raise ValueError(f"the gallery is already pinned to {new_pin.pack_id!r}")
        with self._transaction() as conn:
            yield SqliteEmbeddingWriter(conn, new_pin)
            # Faces still carrying another pack id were not re-embedded.
            left = conn.execute(
                "SELECT COUNT(*) FROM faces WHERE pack_id != ?", (new_pin.pack_id,)
            ).fetchone()[0]
            if left and not delete_unconverted:
                raise GalleryError(f"{left} faces were not re-embedded; nothing was changed")
            conn.execute("DELETE FROM faces WHERE pack_id != ?", (new_pin.pack_id,))
            conn.execute(
                "UPDATE meta SET pack_id = ?, embedding_size = ?, schema_version = ?",
                (new_pin.pack_id, new_pin.embedding_size, SCHEMA_VERSION),
            )

    # ------------------------------------------------------------------ import (archives)

    def existing_ids(
        self, subject_ids: Collection[str], face_ids: Collection[str]
    ) -> tuple[set[str], set[str]]:
        found: tuple[set[str], set[str]] = (set(), set())
        with self._lock:
            for table, ids, into in (("subjects", subject_ids, found[0]), ("faces", face_ids, found[1])):
                listed = list(ids)
                for start in range(0, len(listed), 500):  # under SQLite's bound-parameter limit
                    chunk = listed[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    rows = self._conn.execute(f"SELECT id FROM {table} WHERE id IN ({marks})", chunk)
                    into.update(row[0] for row in rows)
        return found

    def import_gallery(self, subjects: Sequence[Subject], faces: Iterable[PortableFace]) -> list[FaceRecord]:
        """As ``GalleryStore.import_gallery``: one BEGIN IMMEDIATE … COMMIT."""
        pin = self._require_pin()
        records: list[FaceRecord] = []
        try:
            with self._transaction() as conn:
                conn.executemany(
                    "INSERT INTO subjects (id, name, name_key, metadata, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (
                            s.id,
                            s.name,
                            name_key(s.name),
                            json.dumps(dict(s.metadata)),
                            s.created_at,
                            s.updated_at,
                        )
                        for s in subjects
                    ],
                )
                for face in faces:
                    new = NewFace(face.embedding, face.det_score, face.quality, face.crop)
                    _, blob, quality_json, crop = self._face_row(new, pin)
                    row = _FaceRow(
                        face.id, face.subject_id, blob, face.det_score, quality_json, face.created_at, crop
                    )
                    records.append(_insert_face(conn, row, pin))
        except sqlite3.IntegrityError as error:  # a taken id, or a face whose subject is nowhere
            raise ImportClashError(
                f"the import clashes with the gallery at {self._path} ({error}); nothing was changed"
            ) from None
        return records


@dataclass(frozen=True)
class _FaceRow:
    """One face as its INSERTs write it (embedding, quality and crop already encoded)."""

    face_id: str
    subject_id: str
    embedding: bytes
    det_score: float
    quality_json: str
    created_at: str
    crop: tuple[bytes, str] | None  # (PNG, landmarks JSON)


def _insert_face(conn: sqlite3.Connection, row: _FaceRow, pin: PackPin) -> FaceRecord:
    """INSERT a face (and its crop) inside the caller's transaction; its record, index id assigned."""
    cursor = conn.execute(
        "INSERT INTO faces (id, subject_id, embedding, pack_id, det_score, quality, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            row.face_id,
            row.subject_id,
            row.embedding,
            pin.pack_id,
            float(row.det_score),
            row.quality_json,
            row.created_at,
        ),
    )
    index_id = int(cursor.lastrowid or 0)
    if row.crop is not None:
        conn.execute(
            "INSERT INTO face_crops (index_id, png, landmarks) VALUES (?, ?, ?)", (index_id, *row.crop)
        )
    return FaceRecord(
        row.face_id,
        index_id,
        row.subject_id,
        pin.pack_id,
        float(row.det_score),
        json.loads(row.quality_json),
        row.created_at,
        row.crop is not None,
    )


class SqliteEmbeddingWriter:
    """Writes new embeddings inside ``SqliteGalleryStore.repinning`` (its transaction is already open)."""

    def __init__(self, conn: sqlite3.Connection, pin: PackPin) -> None:
        self._conn = conn
        self._pin = pin
        self.written = 0

    def write(self, index_ids: Sequence[int], embeddings: FloatArray) -> None:
        matrix = np.asarray(embeddings, dtype="<f4")
        if matrix.shape != (len(index_ids), self._pin.embedding_size) or not np.all(np.isfinite(matrix)):
            raise EmbeddingSizeError(
                f"need ({len(index_ids)}, {self._pin.embedding_size}) finite embeddings, got {matrix.shape}"
            )
        cursor = self._conn.executemany(
            "UPDATE faces SET embedding = ?, pack_id = ? WHERE index_id = ?",
            [(row.tobytes(), self._pin.pack_id, int(i)) for i, row in zip(index_ids, matrix, strict=True)],
        )
        if cursor.rowcount != len(index_ids):
            raise GalleryError(f"{len(index_ids) - cursor.rowcount} of the re-embedded faces no longer exist")
        self.written += len(index_ids)


def _merged_metadata(source_text: object, target_text: object) -> object:
    """The target's stored metadata with the keys only the source has added (the target's win).

    Returns the target's stored value untouched when either side is not a readable JSON object:
    the merge never turns an unreadable row (or the marker shown for one) into stored content.
    """
    source, target = _stored_object(source_text), _stored_object(target_text)
    if source is None or target is None:
        return target_text
    return json.dumps(source | target)


def _stored_object(text: object) -> dict[str, Any] | None:
    try:
        value = json.loads(text) if isinstance(text, str | bytes) else None
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _subject(row: sqlite3.Row) -> Subject:
    return Subject(
        id=row["id"],
        name=row["name"],
        metadata=stored_metadata(row["metadata"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        face_count=int(row["face_count"]),
        duplicate_name=bool(row["duplicate_name"]),
    )


def _filter_sql(where: SubjectFilter) -> tuple[str, list[object]]:
    """`` AND ...`` conditions on subjects ``s`` for ``where``, and their parameters (in order)."""
    conditions: list[str] = []
    params: list[object] = []
    if where.name_prefix is not None:
        conditions.append(f"s.name_key LIKE ? ESCAPE '{LIKE_ESCAPE}'")
        params.append(like_prefix(where.name_prefix))
    if where.metadata_key is not None:
        params.append(where.metadata_key)
        matches: list[str] = []
        for candidate in where.value_candidates():
            if candidate is None or isinstance(candidate, bool):  # json_each's type: 'true', 'false', 'null'
                matches.append(f"j.type = '{json.dumps(candidate)}'")
            else:
                kinds = "('text')" if isinstance(candidate, str) else "('integer', 'real')"
                matches.append(f"(j.type IN {kinds} AND j.value = ?)")
                params.append(candidate)
        value_sql = f" AND ({' OR '.join(matches)})" if matches else ""
        # CASE: json_each raises on text that is not JSON (a hand-edited row); such rows match nothing.
        conditions.append(
            "CASE WHEN NOT json_valid(s.metadata) THEN 0 WHEN json_type(s.metadata) <> 'object' THEN 0 "
            f"ELSE EXISTS (SELECT 1 FROM json_each(s.metadata) j WHERE j.key = ?{value_sql}) END"
        )
    return "".join(f" AND {condition}" for condition in conditions), params


def _face_record(row: sqlite3.Row) -> FaceRecord:
    return FaceRecord(
        id=row["id"],
        index_id=int(row["index_id"]),
        subject_id=row["subject_id"],
        pack_id=row["pack_id"],
        det_score=float(row["det_score"]),
        quality=json.loads(row["quality"]),
        created_at=row["created_at"],
        has_crop=bool(row["has_crop"]),
    )


def _crop(png: bytes, landmarks_json: str) -> StoredCrop:
    return StoredCrop(decode_png(png), np.asarray(json.loads(landmarks_json), dtype=np.float32), png=png)


def _matrix(blobs: Sequence[bytes], embedding_size: int) -> FloatArray:
    matrix = np.empty((len(blobs), embedding_size), dtype=np.float32)
    for row, blob in enumerate(blobs):
        if not isinstance(blob, bytes) or len(blob) != 4 * embedding_size:
            raise GalleryError(
                f"a stored embedding is not {embedding_size} float32 values: run `face-service check`"
            )
        matrix[row] = np.frombuffer(blob, dtype="<f4")
    return matrix


def open_sqlite_store(data_dir: Path, options: StoreOptions, *, must_exist: bool = False) -> OpenedStore:
    """Lock ``data_dir`` and open its gallery file (created unless ``must_exist``)."""
    path = Path(data_dir) / GALLERY_FILE
    if must_exist and not path.exists():
        raise GalleryError(f"no gallery at {path}")
    lock = DataDirLock(Path(data_dir))
    try:
        store = SqliteGalleryStore(path)
    except BaseException:
        lock.release()
        raise
    return OpenedStore(store, lock)
