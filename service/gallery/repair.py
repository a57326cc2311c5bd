"""``face-service check [--repair]``: find what keeps a gallery from opening, and move it aside.

Nothing biometric is ever deleted. Bad face rows (wrong-length or non-finite embeddings, faces of
no subject) move into the ``quarantined_faces`` table of the same file. A file SQLite cannot read
(garbage, a zeroed header, truncated pages, a directory in its place) is renamed to
``gallery.sqlite3.corrupt-<UTC time>`` and every row still readable from it is copied into a fresh
gallery; the renamed original stays for an operator (or a backup restore).

This is work on the SQLite file itself, so it uses ``SqliteGalleryStore`` and ``DataDirLock``
directly rather than the backend table (``service/gallery/backends.py``).
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from service.gallery.data_dir_lock import DataDirLock
from service.gallery.sqlite_store import GALLERY_FILE, SqliteGalleryStore
from service.gallery.store import BadRow, GalleryCorruptError

logger = logging.getLogger(__name__)

# Copied in this order so that each row's parent is there first; crops only with their face.
_SALVAGE_TABLES: tuple[tuple[str, str], ...] = (
    ("meta", "singleton, schema_version, pack_id, embedding_size"),
    ("subjects", "seq, id, name, metadata, created_at, updated_at"),
    ("faces", "index_id, id, subject_id, embedding, pack_id, det_score, quality, created_at"),
    ("face_crops", "index_id, png, landmarks"),
)
_SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class CheckReport:
    path: Path
    exists: bool
    file_problem: str | None = None  # the file cannot be read as a gallery at all
    pin_problem: str | None = None  # faces without a pack pin (not repairable here)
    bad_rows: list[BadRow] = field(default_factory=list)
    quarantined_before: int = 0

    @property
    def ok(self) -> bool:
        return self.file_problem is None and self.pin_problem is None and not self.bad_rows


@dataclass(frozen=True)
class RepairReport:
    before: CheckReport
    after: CheckReport
    moved_aside: Path | None = None
    salvaged: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0


def check_gallery(data_dir: Path) -> CheckReport:
    """What is wrong with the gallery in ``data_dir`` (the service must be stopped)."""
    lock = DataDirLock(data_dir) if Path(data_dir).is_dir() else None
    try:
        return _check(Path(data_dir) / GALLERY_FILE)
    finally:
        if lock is not None:
            lock.release()


def repair_gallery(data_dir: Path) -> RepairReport:
    """Make the gallery in ``data_dir`` open again, moving (never deleting) what stops it."""
    lock = DataDirLock(data_dir) if Path(data_dir).is_dir() else None
    try:
        path = Path(data_dir) / GALLERY_FILE
        before = _check(path)
        moved_aside: Path | None = None
        salvaged: dict[str, int] = {}
        if before.file_problem is not None:
            moved_aside = _move_aside(path)
            salvaged = _salvage(moved_aside, path)
        quarantined = 0
        current = _check(path)
        if current.bad_rows:
            store = SqliteGalleryStore(path)
            try:
                quarantined = store.quarantine(current.bad_rows)
            finally:
                store.close()
        after = _check(path)
    finally:
        if lock is not None:
            lock.release()
    return RepairReport(before, after, moved_aside, salvaged, quarantined)


def _check(path: Path) -> CheckReport:
    if not path.exists() and not path.is_symlink():
        return CheckReport(path, exists=False)
    if not path.is_file():
        return CheckReport(path, exists=True, file_problem="not a regular file")
    try:
        store = SqliteGalleryStore(path)
    except GalleryCorruptError as error:
        return CheckReport(path, exists=True, file_problem=error.why)
    try:
        problem = store.quick_check()
        if problem is not None:
            return CheckReport(path, exists=True, file_problem=f"integrity check: {problem}")
        quarantined = store.quarantined_count()
        if store.pinned_pack() is None:
            faces = store.counts().faces
            pin_problem = f"{faces} faces but no pack pin (restore from a backup)" if faces else None
            return CheckReport(path, True, pin_problem=pin_problem, quarantined_before=quarantined)
        return CheckReport(path, True, bad_rows=store.bad_rows(), quarantined_before=quarantined)
    except GalleryCorruptError as error:  # pages the pin or the row scan could not read
        return CheckReport(path, exists=True, file_problem=error.why)
    except sqlite3.DatabaseError as error:
        return CheckReport(path, exists=True, file_problem=str(error))
    finally:
        store.close()


def _move_aside(path: Path) -> Path:
    """Rename the file (and its -wal/-shm) to ``<name>.corrupt-<UTC time>``; returns the new path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    path.rename(aside)
    for suffix in _SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(aside.with_name(aside.name + suffix))
    logger.warning("moved the unreadable gallery %s aside to %s", path, aside)
    return aside


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _salvage(source: Path, target: Path) -> dict[str, int]:
    """Copy every row still readable from ``source`` into a fresh gallery at ``target``."""
    SqliteGalleryStore(target).close()  # the schema (a new, 0600 file)
    copied = {table: 0 for table, _ in _SALVAGE_TABLES}
    if not source.is_file():
        return copied
    try:
        old = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return copied
    new = sqlite3.connect(target, isolation_level=None)
    try:
        new.execute("BEGIN IMMEDIATE")
        for table, columns in _SALVAGE_TABLES:
            marks = ",".join("?" * len(columns.split(",")))
            crops = table == "face_crops"  # a crop only with its face (index_id comes first)
            where = " WHERE EXISTS (SELECT 1 FROM faces WHERE index_id = ?)" if crops else ""
            for row in _readable_rows(old, f"SELECT {columns} FROM {table}"):
                params = (*row, row[0]) if crops else row
                cursor = new.execute(
                    f"INSERT OR IGNORE INTO {table} ({columns}) SELECT {marks}{where}", params
                )
                copied[table] += cursor.rowcount
        # The change sequence goes on from the old file's (one more: the salvage is a change too).
        new.execute(f"PRAGMA user_version = {_readable_change_seq(source) + 1}")
        new.execute("COMMIT")
    finally:
        new.close()
        old.close()
    return copied


def _readable_change_seq(source: Path) -> int:
    """The damaged file's change sequence (SqliteGalleryStore.change_seq), 0 without a readable header.

    Read from the header bytes (user_version: 4 bytes big-endian at offset 60 of the SQLite file
    format), because SQLite refuses even a PRAGMA on a file whose later pages are gone.
    """
    with source.open("rb") as handle:
        header = handle.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        return 0
    return int.from_bytes(header[60:64], "big", signed=True)


def _readable_rows(conn: sqlite3.Connection, query: str) -> list[tuple[object, ...]]:
    """The rows a query yields before the first page that cannot be read."""
    rows: list[tuple[object, ...]] = []
    try:
        cursor = conn.execute(query)
        while (row := cursor.fetchone()) is not None:
            rows.append(tuple(row))
    except sqlite3.DatabaseError as error:
        logger.warning("salvage stopped early (%s): %s", query, error)
    return rows
