"""The gallery store on every backend: round trips, pagination, cascades, all-or-nothing adds, pinning,
merging subjects and moving faces.

The ``store`` fixture runs each test on SQLite and on PostgreSQL (a real server, see
tests/postgres_server.py); the SQLite file's own settings (durability, schema-version row) are tested
on SQLite alone.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import psycopg
import pytest

from service.gallery.postgres_store import open_postgres_store
from service.gallery.sqlite_store import SqliteGalleryStore
from service.gallery.store import (
    DuplicateNameError,
    EmbeddingSizeError,
    FaceNotFoundError,
    GalleryCounts,
    GalleryStore,
    InvalidCursorError,
    NewFace,
    PackMismatchError,
    SchemaVersionError,
    StoredCrop,
    StoreOptions,
    Subject,
    SubjectFilter,
    SubjectNotFoundError,
    SubjectPage,
)
from tests.gallery.conftest import unit_vectors

DIM = 16
BACKENDS = ("sqlite", "postgresql")


class Backend(Protocol):
    """One backend's storage for a test: opens stores on it and reaches it with raw SQL of its own."""

    name: ClassVar[str]
    write_error: ClassVar[type[Exception]]  # what a statement failing inside a write transaction raises

    def open(self) -> GalleryStore:
        """A new store on the same storage (a reopen, or another replica)."""
        ...

    def count_rows(self, table: str) -> int: ...

    def failing_face_inserts(self, once_faces: int = 0) -> AbstractContextManager[None]:
        """Inserts into faces abort ('disk on fire') once the table holds ``once_faces`` rows."""
        ...

    def failing_statements(self, operation: str, table: str) -> AbstractContextManager[None]:
        """Every ``operation`` (UPDATE, DELETE) on ``table`` aborts ('disk on fire') in its transaction."""
        ...


@dataclass
class SqliteBackend:
    path: Path
    name: ClassVar[str] = "sqlite"
    write_error: ClassVar[type[Exception]] = sqlite3.IntegrityError

    def open(self) -> GalleryStore:
        return SqliteGalleryStore(self.path)

    def count_rows(self, table: str) -> int:
        with sqlite3.connect(self.path) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    @contextmanager
    def failing_face_inserts(self, once_faces: int = 0) -> Iterator[None]:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute(
            "CREATE TRIGGER fail_insert BEFORE INSERT ON faces "
            f"WHEN (SELECT COUNT(*) FROM faces) >= {once_faces} "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
        try:
            yield
        finally:
            conn.execute("DROP TRIGGER fail_insert")
            conn.close()

    @contextmanager
    def failing_statements(self, operation: str, table: str) -> Iterator[None]:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute(
            f"CREATE TRIGGER fail_statement BEFORE {operation} ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
        try:
            yield
        finally:
            conn.execute("DROP TRIGGER fail_statement")
            conn.close()


@dataclass
class PostgresBackend:
    url: str
    name: ClassVar[str] = "postgresql"
    write_error: ClassVar[type[Exception]] = psycopg.errors.RaiseException

    def open(self) -> GalleryStore:
        options = StoreOptions(backend="postgresql", database_url=self.url, pool_max_size=4)
        return open_postgres_store(Path("unused"), options).store

    def count_rows(self, table: str) -> int:
        with psycopg.connect(self.url) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # type: ignore[index]

    @contextmanager
    def failing_face_inserts(self, once_faces: int = 0) -> Iterator[None]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION fail_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF (SELECT COUNT(*) FROM faces) >= {once_faces} THEN "
                "RAISE EXCEPTION 'disk on fire'; END IF; RETURN NEW; END $$"
            )
            conn.execute(
                "CREATE TRIGGER fail_insert BEFORE INSERT ON faces "
                "FOR EACH ROW EXECUTE FUNCTION fail_insert()"
            )
            try:
                yield
            finally:
                conn.execute("DROP TRIGGER fail_insert ON faces")
                conn.execute("DROP FUNCTION fail_insert()")

    @contextmanager
    def failing_statements(self, operation: str, table: str) -> Iterator[None]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION fail_statement() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'disk on fire'; END $$"
            )
            conn.execute(
                f"CREATE TRIGGER fail_statement BEFORE {operation} ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION fail_statement()"
            )
            try:
                yield
            finally:
                conn.execute(f"DROP TRIGGER fail_statement ON {table}")
                conn.execute("DROP FUNCTION fail_statement()")


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(tmp_path / "gallery.sqlite3")
    return PostgresBackend(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(backend: Backend) -> Iterator[GalleryStore]:
    opened = backend.open()
    opened.pin("pack-a", DIM)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteGalleryStore]:
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


def test_durability_settings(sqlite_store: SqliteGalleryStore) -> None:
    conn = sqlite3.connect(sqlite_store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent, in the file
    conn.close()
    own = sqlite_store._conn  # per-connection settings of the store's own connection
    assert own.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert own.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert own.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_subject_and_face_round_trip(store: GalleryStore) -> None:
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


def test_update_subject(store: GalleryStore) -> None:
    subject = store.create_subject("Bob", {"a": 1})
    renamed = store.update_subject(subject.id, name="Robert")
    assert renamed.name == "Robert"
    assert renamed.metadata == {"a": 1}
    assert renamed.updated_at >= subject.updated_at
    assert store.update_subject(subject.id, metadata={"b": 2}).metadata == {"b": 2}
    with pytest.raises(SubjectNotFoundError):
        store.update_subject("no-such-id", name="x")


def test_pagination_is_stable_and_complete(store: GalleryStore) -> None:
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


def test_deleting_a_subject_cascades_to_faces_and_crops(store: GalleryStore, backend: Backend) -> None:
    keep, drop = store.create_subject("keep"), store.create_subject("drop")
    kept = store.add_faces(keep.id, _faces(2, seed=1, crops=True))
    dropped = store.add_faces(drop.id, _faces(3, seed=2, crops=True))
    removed = store.delete_subject(drop.id)
    assert sorted(r.index_id for r in removed) == sorted(r.index_id for r in dropped)
    assert store.counts().subjects == 1
    assert store.counts().faces == 2
    assert store.all_embeddings()[0].tolist() == [r.index_id for r in kept]
    assert backend.count_rows("face_crops") == 2
    with pytest.raises(SubjectNotFoundError):
        store.get_subject(drop.id)
    with pytest.raises(FaceNotFoundError):
        store.get_face(dropped[0].id)


def test_delete_face_checks_its_subject(store: GalleryStore) -> None:
    a, b = store.create_subject("a"), store.create_subject("b")
    record = store.add_faces(a.id, _faces(1))[0]
    with pytest.raises(FaceNotFoundError):
        store.delete_face(record.id, subject_id=b.id)
    assert store.delete_face(record.id, subject_id=a.id).index_id == record.index_id
    assert store.counts().faces == 0


def test_index_ids_are_never_reused(store: GalleryStore) -> None:
    subject = store.create_subject("s")
    first = store.add_faces(subject.id, _faces(2))
    store.delete_face(first[1].id)
    again = store.add_faces(subject.id, _faces(1, seed=5))
    assert again[0].index_id > first[1].index_id


def test_an_invalid_face_fails_the_whole_batch(store: GalleryStore) -> None:
    subject = store.create_subject("s")
    faces = _faces(3)
    faces.append(NewFace(np.ones(DIM + 1, dtype=np.float32), det_score=0.9))
    with pytest.raises(EmbeddingSizeError):
        store.add_faces(subject.id, faces)
    assert store.counts().faces == 0


def test_a_failure_inside_the_transaction_leaves_nothing(store: GalleryStore, backend: Backend) -> None:
    subject = store.create_subject("s")
    # A real database abort on the third insert, after two rows were already written in the transaction.
    with backend.failing_face_inserts(once_faces=2), pytest.raises(backend.write_error, match="disk on fire"):
        store.add_faces(subject.id, _faces(4, crops=True))
    assert store.counts().faces == 0
    assert backend.count_rows("face_crops") == 0
    assert len(store.add_faces(subject.id, _faces(4))) == 4  # the store is usable afterwards


def test_adding_to_a_missing_subject_fails(store: GalleryStore) -> None:
    with pytest.raises(SubjectNotFoundError):
        store.add_faces("missing", _faces(1))


def test_pack_pinning(backend: Backend) -> None:
    first = backend.open()
    first.pin("pack-a", DIM)
    first.close()
    reopened = backend.open()
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


def test_the_change_sequence_counts_committed_writes_and_survives_reopening(backend: Backend) -> None:
    store = backend.open()
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
    with backend.failing_face_inserts(), pytest.raises(backend.write_error, match="disk on fire"):
        store.add_faces(subject.id, _faces(2))
    with pytest.raises(SubjectNotFoundError):
        store.add_faces("missing", _faces(1))
    assert store.change_seq() == 5
    store.close()

    reopened = backend.open()
    assert reopened.change_seq() == 5
    reopened.delete_subject(subject.id)
    assert reopened.change_seq() == 6
    reopened.close()


def _logged_changes(backend: Backend) -> int:
    """Rows of PostgreSQL's change log (SQLite keeps none: its change sequence is the header's)."""
    return backend.count_rows("gallery_changes") if backend.name == "postgresql" else 0


def test_merging_moves_faces_and_crops_to_the_target_and_deletes_the_source(
    store: GalleryStore, backend: Backend
) -> None:
    source = store.create_subject("Ada L.", {"team": "engines", "employee_id": "E-7"})
    target = store.create_subject("Ada Lovelace", {"team": "analytics", "level": 3})
    other = store.create_subject("Charles")
    source_faces = _faces(2, seed=1, crops=True)
    moved = store.add_faces(source.id, source_faces)
    kept = store.add_faces(target.id, _faces(1, seed=2, crops=True))
    store.add_faces(other.id, _faces(1, seed=3))
    target_before = store.get_subject(target.id)
    seq, logged = store.change_seq(), _logged_changes(backend)

    merged = store.merge_subject(source.id, target.id)

    assert (merged.id, merged.name, merged.face_count) == (target.id, "Ada Lovelace", 3)
    # The target's keys win; keys only the source had are added.
    assert merged.metadata == {"team": "analytics", "level": 3, "employee_id": "E-7"}
    assert merged.updated_at > target_before.updated_at
    assert merged.created_at == target.created_at
    assert store.get_subject(target.id) == merged
    with pytest.raises(SubjectNotFoundError):
        store.get_subject(source.id)
    faces = store.list_faces(target.id)
    assert [f.id for f in faces] == [r.id for r in sorted(kept + moved, key=lambda r: r.index_id)]
    assert {f.index_id for f in faces} == {
        r.index_id for r in kept + moved
    }  # ids kept: the index stays valid
    owners = store.owners([r.index_id for r in moved])
    assert {owner.subject_id for owner in owners.values()} == {target.id}
    assert {owner.subject_name for owner in owners.values()} == {"Ada Lovelace"}
    crop, original = store.get_crop(moved[1].id), source_faces[1].crop
    assert crop is not None
    assert original is not None
    np.testing.assert_array_equal(crop.image, original.image)
    assert backend.count_rows("face_crops") == 3
    assert store.counts() == GalleryCounts(subjects=2, faces=4)
    assert store.get_subject(other.id).face_count == 1  # nobody else's faces moved
    assert store.change_seq() == seq + 1  # one transaction
    if backend.name == "postgresql":
        assert _logged_changes(backend) == logged + 1


def test_a_merge_into_itself_or_with_an_unknown_subject_changes_nothing(
    store: GalleryStore, backend: Backend
) -> None:
    subject = store.create_subject("s", {"a": 1})
    store.add_faces(subject.id, _faces(2))
    before, seq = store.get_subject(subject.id), store.change_seq()
    with pytest.raises(ValueError, match="into itself"):
        store.merge_subject(subject.id, subject.id)
    with pytest.raises(SubjectNotFoundError) as unknown_source:
        store.merge_subject("no-such-source", subject.id)
    assert unknown_source.value.subject_id == "no-such-source"
    with pytest.raises(SubjectNotFoundError) as unknown_target:
        store.merge_subject(subject.id, "no-such-target")
    assert unknown_target.value.subject_id == "no-such-target"
    assert store.get_subject(subject.id) == before
    assert store.change_seq() == seq  # refused writes roll their sequence step back


def test_a_merge_that_fails_inside_its_transaction_changes_nothing(
    store: GalleryStore, backend: Backend
) -> None:
    source, target = store.create_subject("a", {"x": 1}), store.create_subject("b", {"y": 2})
    source_faces = store.add_faces(source.id, _faces(2, crops=True))
    target_before, seq = store.get_subject(target.id), store.change_seq()
    # The source's delete is the merge's last statement: the faces were moved and the target updated.
    with backend.failing_statements("DELETE", "subjects"), pytest.raises(backend.write_error, match="fire"):
        store.merge_subject(source.id, target.id)
    assert store.list_faces(source.id) == source_faces
    assert store.get_subject(target.id) == target_before
    assert store.change_seq() == seq
    assert store.merge_subject(source.id, target.id).face_count == 2  # usable afterwards


def test_moving_a_face_changes_its_subject_only(store: GalleryStore, backend: Backend) -> None:
    a, b = store.create_subject("a", {"k": "a"}), store.create_subject("b", {"k": "b"})
    faces = _faces(2, seed=4, crops=True)
    records = store.add_faces(a.id, faces)
    a_before, b_before = store.get_subject(a.id), store.get_subject(b.id)
    seq, logged = store.change_seq(), _logged_changes(backend)

    moved = store.move_face(records[0].id, b.id)

    assert moved == dataclasses.replace(records[0], subject_id=b.id)  # same ids, crop, scores
    assert store.get_face(records[0].id) == moved
    assert store.list_faces(b.id) == [moved]
    assert store.list_faces(a.id) == [records[1]]
    a_after, b_after = store.get_subject(a.id), store.get_subject(b.id)
    assert (a_after.face_count, b_after.face_count) == (1, 1)
    assert a_after.updated_at > a_before.updated_at
    assert b_after.updated_at > b_before.updated_at
    assert (a_after.metadata, b_after.metadata) == ({"k": "a"}, {"k": "b"})
    assert store.owners([moved.index_id])[moved.index_id].subject_id == b.id
    crop, original = store.get_crop(moved.id), faces[0].crop
    assert crop is not None
    assert original is not None
    np.testing.assert_array_equal(crop.image, original.image)
    assert store.change_seq() == seq + 1
    if backend.name == "postgresql":
        assert _logged_changes(backend) == logged + 1


def test_moving_an_unknown_face_or_to_an_unknown_subject_changes_nothing(
    store: GalleryStore, backend: Backend
) -> None:
    subject = store.create_subject("s")
    record = store.add_faces(subject.id, _faces(1))[0]
    seq = store.change_seq()
    with pytest.raises(FaceNotFoundError):
        store.move_face("no-such-face", subject.id)
    with pytest.raises(SubjectNotFoundError) as unknown:
        store.move_face(record.id, "no-such-subject")
    assert unknown.value.subject_id == "no-such-subject"
    # A face update that aborts inside the transaction: the face stays where it was.
    other = store.create_subject("t")
    with backend.failing_statements("UPDATE", "faces"), pytest.raises(backend.write_error, match="fire"):
        store.move_face(record.id, other.id)
    assert store.get_face(record.id) == record
    assert store.get_subject(other.id).face_count == 0
    assert store.change_seq() == seq + 1  # only the create_subject above committed


# ---------------------------------------------------------------------- search and duplicate names


def _names(page: SubjectPage) -> list[str]:
    return [subject.name for subject in page.items]


def test_a_name_prefix_matches_ignoring_case_and_unicode_case(store: GalleryStore) -> None:
    for name in ("Alice", "alan", "ALBERT", "Bob", "Ålesund", "Straße", " Alfred"):
        store.create_subject(name)
    everyone = SubjectFilter()
    assert len(store.list_subjects(where=everyone).items) == 7
    for prefix in ("al", "AL", "aL"):
        assert _names(store.list_subjects(where=SubjectFilter(name_prefix=prefix))) == [
            "Alice",
            "alan",
            "ALBERT",
            " Alfred",  # names compare trimmed
        ]
    assert _names(store.list_subjects(where=SubjectFilter(name_prefix="å"))) == ["Ålesund"]
    assert _names(store.list_subjects(where=SubjectFilter(name_prefix="STRASS"))) == ["Straße"]  # casefold
    assert _names(store.list_subjects(where=SubjectFilter(name_prefix="alice "))) == []
    assert _names(store.list_subjects(where=SubjectFilter(name_prefix="x"))) == []


def test_like_wildcards_and_the_escape_in_a_prefix_are_plain_characters(store: GalleryStore) -> None:
    for name in ("50% off", "50 off", "500", "a_b", "axb", "%top", "back\\slash", "backslash"):
        store.create_subject(name)

    def found(prefix: str) -> list[str]:
        return _names(store.list_subjects(where=SubjectFilter(name_prefix=prefix)))

    assert found("50%") == ["50% off"]
    assert found("a_") == ["a_b"]
    assert found("%") == ["%top"]
    assert found("_") == []
    assert found("back\\") == ["back\\slash"]
    assert found("50") == ["50% off", "50 off", "500"]


def test_metadata_filters_compare_json_values(store: GalleryStore) -> None:
    stored: list[tuple[str, dict[str, object]]] = [
        ("red", {"team": "red"}),
        ("Red", {"team": "Red"}),
        ("list", {"team": ["red"]}),
        ("object", {"team": {"red": 1}}),
        ("int", {"n": 42}),
        ("float", {"n": 42.0}),
        ("text 42", {"n": "42"}),
        ("big", {"n": 2**63 - 1}),
        ("true", {"flag": True}),
        ("text true", {"flag": "true"}),
        ("null", {"none": None}),
        ("empty", {}),
    ]
    for name, metadata in stored:
        store.create_subject(name, metadata)

    def found(key: str, value: str | None = None) -> list[str]:
        return _names(store.list_subjects(where=SubjectFilter(metadata_key=key, metadata_value=value)))

    assert found("team") == ["red", "Red", "list", "object"]
    assert found("team", "red") == ["red"]  # strings exactly; arrays and objects never match
    assert found("Team") == []  # keys are exact
    assert found("n", "42") == ["int", "float", "text 42"]
    assert found("n", "42.0") == ["int", "float"]  # a number, not the string "42"
    assert found("n", "4.2e1") == ["int", "float"]
    assert found("n", str(2**63 - 1)) == ["big"]
    assert found("n", "1" + "0" * 30) == []  # beyond 64 bits: compared as a float, no overflow
    assert found("n", " 42") == []
    assert found("flag", "true") == ["true", "text true"]
    assert found("flag", "True") == []
    assert found("none") == ["null"]
    assert found("none", "null") == ["null"]
    assert found("missing") == []
    with pytest.raises(ValueError, match="metadata_key"):
        SubjectFilter(metadata_value="red")


def test_filters_combine_and_keep_cursor_pagination(store: GalleryStore) -> None:
    created = [
        store.create_subject(f"{'Ann' if i % 3 else 'Bo'} {i}", {"team": "red" if i % 2 else "blue"})
        for i in range(12)
    ]
    where = SubjectFilter(name_prefix="ann", metadata_key="team", metadata_value="red")
    expected = [s.id for i, s in enumerate(created) if i % 3 and i % 2]
    seen: list[str] = []
    page = store.list_subjects(limit=2, where=where)
    pages = 1
    seen += [s.id for s in page.items]
    while page.next_cursor:
        page = store.list_subjects(page.next_cursor, limit=2, where=where)
        pages += 1
        seen += [s.id for s in page.items]
    assert seen == expected  # [1, 5, 7, 11]: creation order, each once
    assert pages == 2
    # A cursor is a position: one from an unfiltered listing goes on with a filter.
    unfiltered = store.list_subjects(limit=6)
    rest = store.list_subjects(unfiltered.next_cursor, limit=50, where=where)
    assert [s.id for s in rest.items] == expected[2:]
    assert rest.next_cursor is None


def test_duplicate_names_are_flagged_as_they_are_now(store: GalleryStore) -> None:
    ann = store.create_subject("Ann Lee")
    assert not ann.duplicate_name
    other = store.create_subject("  ann LEE ")  # trimmed, any case: the same name
    assert other.duplicate_name
    assert store.get_subject(ann.id).duplicate_name  # worked out at read time, for both
    assert [s.duplicate_name for s in store.list_subjects().items] == [True, True]
    renamed = store.update_subject(other.id, name="Ann Lea")
    assert not renamed.duplicate_name
    assert not store.get_subject(ann.id).duplicate_name
    assert store.update_subject(other.id, name="ANN LEE").duplicate_name
    store.delete_subject(other.id)
    assert not store.get_subject(ann.id).duplicate_name


def test_unique_names_refuse_a_second_subject_and_a_rename(store: GalleryStore, backend: Backend) -> None:
    ann = store.create_subject("Ann", {"k": 1})
    bob = store.create_subject("Bob")
    seq = store.change_seq()
    with pytest.raises(DuplicateNameError) as refused:
        store.create_subject(" ANN", unique_name=True)
    assert refused.value.other_id == ann.id
    with pytest.raises(DuplicateNameError):
        store.update_subject(bob.id, name="ann", metadata={"x": 1}, unique_name=True)
    assert backend.count_rows("subjects") == 2
    assert store.get_subject(bob.id) == bob  # neither renamed nor its metadata replaced
    assert store.change_seq() == seq  # the refused writes rolled back
    # Its own name (another case) and metadata-only changes are no duplicates.
    assert store.update_subject(ann.id, name="ANN", unique_name=True).name == "ANN"
    store.create_subject("bob")  # flag (the default): allowed
    assert store.update_subject(bob.id, metadata={"y": 2}, unique_name=True).duplicate_name


def test_concurrent_unique_creates_of_one_name_let_one_in(backend: Backend) -> None:
    stores = [backend.open() for _ in range(2)]  # two replicas (two connections to one SQLite file)
    try:
        stores[0].pin("pack-a", DIM)
        barrier = threading.Barrier(8)

        def create(i: int) -> bool:
            barrier.wait()
            try:
                stores[i % 2].create_subject(f"Same Name{' ' * (i % 3)}", unique_name=True)
            except DuplicateNameError:
                return False
            return True

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(create, range(8)))
        assert results.count(True) == 1
        assert backend.count_rows("subjects") == 1
    finally:
        for opened in stores:
            opened.close()


def test_the_name_prefix_is_an_index_range(store: GalleryStore, backend: Backend) -> None:
    """The listing's own conditions, planned: the prefix is served by the name-key index."""
    from service.gallery import postgres_store, sqlite_store

    where = SubjectFilter(name_prefix="Al_")
    if isinstance(backend, SqliteBackend):
        conditions, params = sqlite_store._filter_sql(where)
        with sqlite3.connect(backend.path) as conn:
            query = f"EXPLAIN QUERY PLAN SELECT s.id FROM subjects s WHERE 1{conditions}"
            plan = " ".join(str(row[-1]) for row in conn.execute(query, params))
    else:
        assert isinstance(backend, PostgresBackend)
        conditions, params = postgres_store._filter_sql(where)
        with psycopg.connect(backend.url) as pg:
            pg.execute("SET enable_seqscan = off")  # an empty table: make the planner show what it can use
            query = f"EXPLAIN SELECT s.id FROM subjects s WHERE true{conditions}"
            plan = " ".join(str(row[0]) for row in pg.execute(query.encode(), params))
    assert "subjects_by_name_key" in plan, plan
    assert ("SEARCH" if isinstance(backend, SqliteBackend) else "Index Cond") in plan, plan  # a range


def test_subjects_without_a_name_key_get_one_at_open(backend: Backend) -> None:
    """Rows from before name search (or from older code) are keyed when the store opens."""
    store = backend.open()
    store.pin("pack-a", DIM)
    store.create_subject("Émile")
    store.create_subject("EMILE")
    seq = store.change_seq()
    store.close()
    if isinstance(backend, SqliteBackend):
        with sqlite3.connect(backend.path) as conn:  # a gallery file as older builds made it
            conn.execute("DROP INDEX subjects_by_name_key")
            conn.execute("ALTER TABLE subjects DROP COLUMN name_key")
    else:
        with psycopg.connect(backend.url) as conn:
            conn.execute("UPDATE subjects SET name_key = NULL")
    reopened = backend.open()
    try:
        assert _names(reopened.list_subjects(where=SubjectFilter(name_prefix="émi"))) == ["Émile"]
        assert all(s.duplicate_name is False for s in reopened.list_subjects().items)  # "emile" ≠ "émile"
        assert reopened.create_subject("émile").duplicate_name
        assert reopened.change_seq() == seq + 1  # keying rows is no change of content
    finally:
        reopened.close()


def test_metadata_that_is_not_json_matches_no_filter(sqlite_store: SqliteGalleryStore) -> None:
    kept = sqlite_store.create_subject("kept", {"team": "red"})
    broken = sqlite_store.create_subject("broken", {"team": "red"})
    with sqlite3.connect(sqlite_store.path) as conn:
        conn.execute("UPDATE subjects SET metadata = '{not json' WHERE id = ?", (broken.id,))
    page = sqlite_store.list_subjects(where=SubjectFilter(metadata_key="team", metadata_value="red"))
    assert [s.id for s in page.items] == [kept.id]
    assert len(sqlite_store.list_subjects().items) == 2


def test_imported_subjects_are_searchable_and_flagged_at_once(store: GalleryStore) -> None:
    """``import_gallery`` writes the name key with the name, as create does (no reopen needed)."""
    store.create_subject("Zoë Ash")
    incoming = Subject("0b6f7c9e-0000-4000-8000-000000000001", "ZOË ASH", {"from": "archive"}, "t0", "t0")
    store.import_gallery([incoming], [])
    found = store.list_subjects(where=SubjectFilter(name_prefix="zoë"))
    assert [(s.name, s.duplicate_name) for s in found.items] == [("Zoë Ash", True), ("ZOË ASH", True)]
