"""SqliteGalleryStore: round trips, pagination, cascades, all-or-nothing adds, pinning, durability."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.gallery.sqlite_store import SqliteGalleryStore
from service.gallery.store import (
    EmbeddingSizeError,
    FaceNotFoundError,
    InvalidCursorError,
    NewFace,
    PackMismatchError,
    SchemaVersionError,
    StoredCrop,
    SubjectNotFoundError,
)
from tests.gallery.conftest import unit_vectors

DIM = 16


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteGalleryStore]:
    opened = SqliteGalleryStore(tmp_path / "gallery.sqlite3")
    opened.pin("pack-a", DIM)
    yield opened
    opened.close()


def _faces(count: int, seed: int = 0, *, crops: bool = False) -> list[NewFace]:
    rng = np.random.default_rng(seed)
    faces = []
    for i, vector in enumerate(unit_vectors(count, DIM, seed)):
        crop = None
        if crops:
            image = rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)
            crop = StoredCrop(image, rng.uniform(0, 18, (5, 2)).astype(np.float32))
        faces.append(NewFace(vector, det_score=0.9 + i / 1000, quality={"sharpness": 12.5 + i}, crop=crop))
    return faces


def test_durability_settings(store: SqliteGalleryStore) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent, in the file
    conn.close()
    own = store._conn  # per-connection settings of the store's own connection
    assert own.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert own.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert own.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_subject_and_face_round_trip(store: SqliteGalleryStore) -> None:
    subject = store.create_subject("Ada", {"team": "engines", "level": 3})
    assert store.get_subject(subject.id) == subject
    faces = _faces(3, crops=True)
    records = store.add_faces(subject.id, faces)
    assert [r.subject_id for r in records] == [subject.id] * 3
    assert len({r.index_id for r in records}) == 3
    assert all(r.has_crop for r in records)
    assert store.list_faces(subject.id) == records
    assert store.get_subject(subject.id).face_count == 3

    crop, original = store.get_crop(records[1].id), faces[1].crop
    assert crop is not None
    assert original is not None
    np.testing.assert_array_equal(crop.image, original.image)  # PNG is lossless
    np.testing.assert_allclose(crop.landmarks, original.landmarks)
    assert records[1].quality == {"sharpness": 13.5}

    ids, matrix = store.all_embeddings()
    assert ids.tolist() == [r.index_id for r in records]
    np.testing.assert_array_equal(matrix, np.stack([f.embedding for f in faces]))
    np.testing.assert_array_equal(store.subject_embeddings(subject.id), matrix)


def test_update_subject(store: SqliteGalleryStore) -> None:
    subject = store.create_subject("Bob", {"a": 1})
    renamed = store.update_subject(subject.id, name="Robert")
    assert renamed.name == "Robert"
    assert renamed.metadata == {"a": 1}
    assert renamed.updated_at >= subject.updated_at
    assert store.update_subject(subject.id, metadata={"b": 2}).metadata == {"b": 2}
    with pytest.raises(SubjectNotFoundError):
        store.update_subject("no-such-id", name="x")


def test_pagination_is_stable_and_complete(store: SqliteGalleryStore) -> None:
    created = [store.create_subject(f"s{i}").id for i in range(7)]
    seen: list[str] = []
    page = store.list_subjects(limit=3)
    seen += [s.id for s in page.items]
    # A deletion between pages does not disturb the cursor of the next page.
    store.delete_subject(created[4])
    while page.next_cursor:
        page = store.list_subjects(page.next_cursor, limit=3)
        seen += [s.id for s in page.items]
    assert seen == [sid for i, sid in enumerate(created) if i != 4]
    assert store.list_subjects(limit=100).next_cursor is None
    with pytest.raises(InvalidCursorError):
        store.list_subjects("not a cursor!")


def test_deleting_a_subject_cascades_to_faces_and_crops(store: SqliteGalleryStore) -> None:
    keep, drop = store.create_subject("keep"), store.create_subject("drop")
    kept = store.add_faces(keep.id, _faces(2, seed=1, crops=True))
    dropped = store.add_faces(drop.id, _faces(3, seed=2, crops=True))
    removed = store.delete_subject(drop.id)
    assert sorted(r.index_id for r in removed) == sorted(r.index_id for r in dropped)
    assert store.counts().subjects == 1
    assert store.counts().faces == 2
    assert store.all_embeddings()[0].tolist() == [r.index_id for r in kept]
    assert store._conn.execute("SELECT COUNT(*) FROM face_crops").fetchone()[0] == 2
    with pytest.raises(SubjectNotFoundError):
        store.get_subject(drop.id)
    with pytest.raises(FaceNotFoundError):
        store.get_face(dropped[0].id)


def test_delete_face_checks_its_subject(store: SqliteGalleryStore) -> None:
    a, b = store.create_subject("a"), store.create_subject("b")
    record = store.add_faces(a.id, _faces(1))[0]
    with pytest.raises(FaceNotFoundError):
        store.delete_face(record.id, subject_id=b.id)
    assert store.delete_face(record.id, subject_id=a.id).index_id == record.index_id
    assert store.counts().faces == 0


def test_index_ids_are_never_reused(store: SqliteGalleryStore) -> None:
    subject = store.create_subject("s")
    first = store.add_faces(subject.id, _faces(2))
    store.delete_face(first[1].id)
    again = store.add_faces(subject.id, _faces(1, seed=5))
    assert again[0].index_id > first[1].index_id


def test_an_invalid_face_fails_the_whole_batch(store: SqliteGalleryStore) -> None:
    subject = store.create_subject("s")
    faces = _faces(3)
    faces.append(NewFace(np.ones(DIM + 1, dtype=np.float32), det_score=0.9))
    with pytest.raises(EmbeddingSizeError):
        store.add_faces(subject.id, faces)
    assert store.counts().faces == 0


def test_a_failure_inside_the_transaction_leaves_nothing(store: SqliteGalleryStore) -> None:
    subject = store.create_subject("s")
    # A real SQLite abort on the third insert, after two rows were already written in the transaction.
    store._conn.execute(
        "CREATE TRIGGER fail_third BEFORE INSERT ON faces WHEN (SELECT COUNT(*) FROM faces) = 2 "
        "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="disk on fire"):
        store.add_faces(subject.id, _faces(4, crops=True))
    assert store.counts().faces == 0
    assert store._conn.execute("SELECT COUNT(*) FROM face_crops").fetchone()[0] == 0
    store._conn.execute("DROP TRIGGER fail_third")
    assert len(store.add_faces(subject.id, _faces(4))) == 4  # the store is usable afterwards


def test_adding_to_a_missing_subject_fails(store: SqliteGalleryStore) -> None:
    with pytest.raises(SubjectNotFoundError):
        store.add_faces("missing", _faces(1))


def test_pack_pinning(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    first = SqliteGalleryStore(path)
    first.pin("pack-a", DIM)
    first.close()
    reopened = SqliteGalleryStore(path)
    assert reopened.pin("pack-a", DIM).pack_id == "pack-a"
    with pytest.raises(PackMismatchError) as mismatch:
        reopened.pin("pack-b", DIM)
    message = str(mismatch.value)
    assert "pack-a" in message
    assert "pack-b" in message
    assert "face-service reembed" in message
    with pytest.raises(PackMismatchError, match="512"):
        reopened.pin("pack-a", 512)
    reopened.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    store = SqliteGalleryStore(path)
    store.pin("p", DIM)
    store._conn.execute("UPDATE meta SET schema_version = 99")
    store.close()
    with pytest.raises(SchemaVersionError, match="99"):
        SqliteGalleryStore(path)


def test_the_change_sequence_counts_committed_writes_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "gallery.sqlite3"
    store = SqliteGalleryStore(path)
    assert store.change_seq() == 0
    store.pin("pack-a", DIM)
    subject = store.create_subject("s")
    faces = store.add_faces(subject.id, _faces(3))
    assert store.change_seq() == 3  # pin, create, one add of three faces: one transaction each
    store.update_subject(subject.id, name="t")
    store.delete_face(faces[0].id)
    assert store.change_seq() == 5
    store.get_subject(subject.id)
    store.list_faces(subject.id)
    store.list_subjects()
    assert store.change_seq() == 5  # reads change nothing

    # A write that fails (here inside its transaction) rolls its sequence step back with it.
    store._conn.execute(
        "CREATE TRIGGER fail_any BEFORE INSERT ON faces BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="disk on fire"):
        store.add_faces(subject.id, _faces(2))
    with pytest.raises(SubjectNotFoundError):
        store.add_faces("missing", _faces(1))
    assert store.change_seq() == 5
    store._conn.execute("DROP TRIGGER fail_any")
    store.close()

    reopened = SqliteGalleryStore(path)
    assert reopened.change_seq() == 5
    reopened.delete_subject(subject.id)
    assert reopened.change_seq() == 6
    reopened.close()
