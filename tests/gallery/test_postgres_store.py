"""PostgresGalleryStore beyond the shared store tests: the change feed's write side, outages, import,
migrations and replicas, redaction. Everything runs against a real PostgreSQL (tests/postgres_server.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import psycopg
import pytest

from service.gallery.postgres_schema import COMPONENT, HNSW_INDEX, MIGRATIONS, NOTIFY_CHANNEL
from service.gallery.postgres_store import (
    DatabaseDamagedError,
    ImportedFace,
    PostgresGalleryStore,
    open_postgres_store,
)
from service.gallery.store import (
    FaceRecord,
    GalleryCounts,
    GalleryError,
    NewFace,
    PackMismatchError,
    PackPin,
    SchemaVersionError,
    StoredCrop,
    StoreOptions,
    StoreUnavailableError,
    Subject,
    is_storage_full,
)
from service.postgres.migrations import apply_migrations
from tests.gallery.conftest import unit_vectors
from tests.postgres_server import PostgresServer

T = TypeVar("T")
DIM = 8
PASSWORD = "s3cret-pw"  # the test server trusts every local connection, so any password works


def _open(url: str, **options: object) -> PostgresGalleryStore:
    opened = open_postgres_store(
        Path("unused"),
        StoreOptions(backend="postgresql", database_url=url, **options),  # type: ignore[arg-type]
    )
    assert opened.lock is None  # replicas share the database: no data-dir lock
    store = opened.store
    assert isinstance(store, PostgresGalleryStore)
    return store


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresGalleryStore]:
    opened = _open(pg_url)
    opened.pin("pack-a", DIM)
    yield opened
    opened.close()


def _faces(count: int, seed: int = 0) -> list[NewFace]:
    return [
        NewFace(vector, det_score=0.9, quality={"sharpness": 1.0})
        for vector in unit_vectors(count, DIM, seed)
    ]


def _log(url: str) -> list[tuple[int, list[int], list[int], bool]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT seq, added, removed, reset FROM gallery_changes ORDER BY seq").fetchall()
    return [(int(seq), list(added), list(removed), bool(reset)) for seq, added, removed, reset in rows]


def _with_password(url: str) -> str:
    return url.replace("postgres:@", f"postgres:{PASSWORD}@", 1)


def test_each_write_logs_one_change_with_the_ids_it_added_and_removed(
    store: PostgresGalleryStore, pg_url: str
) -> None:
    subject = store.create_subject("ada")
    added = store.add_faces(subject.id, _faces(3))
    store.update_subject(subject.id, name="Ada")
    store.delete_face(added[0].id)
    store.delete_subject(subject.id)
    ids = [face.index_id for face in added]
    assert (
        _log(pg_url)
        == [
            (1, [], [], False),  # the first pin
            (2, [], [], False),
            (3, ids, [], False),
            (4, [], [], False),
            (5, [], [ids[0]], False),
            (6, [], ids[1:], False),
        ]
    )
    assert store.change_seq() == 6


def test_a_rolled_back_write_neither_bumps_the_sequence_nor_logs_nor_notifies(
    store: PostgresGalleryStore, pg_url: str
) -> None:
    subject = store.create_subject("s")
    with (
        psycopg.connect(pg_url, autocommit=True) as admin,
        psycopg.connect(pg_url, autocommit=True) as listener,
    ):
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        # Fails at the very end of the transaction (the log trim), after its NOTIFY was queued.
        admin.execute(
            "CREATE FUNCTION no_trim() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'trim refused'; END $$"
        )
        admin.execute(
            "CREATE TRIGGER no_trim BEFORE DELETE ON gallery_changes "
            "FOR EACH STATEMENT EXECUTE FUNCTION no_trim()"
        )
        with pytest.raises(psycopg.errors.RaiseException, match="trim refused"):
            store.add_faces(subject.id, _faces(2))
        with pytest.raises(GalleryError):
            store.delete_subject("missing")
        assert [n.payload for n in listener.notifies(timeout=0.5)] == []
        admin.execute("DROP TRIGGER no_trim ON gallery_changes")
        assert store.change_seq() == 2
        assert store.counts().faces == 0
        assert [seq for seq, *_ in _log(pg_url)] == [1, 2]

        store.add_faces(subject.id, _faces(1))  # the next write takes the next number
        assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == ["3"]
    assert [seq for seq, *_ in _log(pg_url)] == [1, 2, 3]


def test_a_notify_with_the_sequence_arrives_when_the_write_commits(
    store: PostgresGalleryStore, pg_url: str
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        subject = store.create_subject("s")
        store.add_faces(subject.id, _faces(2))
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]
    assert payloads == ["2", "3"]


def test_concurrent_writers_on_two_replicas_commit_a_dense_ordered_sequence(pg_url: str) -> None:
    first, second = _open(pg_url), _open(pg_url)
    first.pin("pack-a", DIM)
    second.pin("pack-a", DIM)  # checks the pin: writes nothing
    writes_per_thread, threads = 15, 4
    errors: list[BaseException] = []

    def enroll(store: PostgresGalleryStore, seed: int) -> None:
        try:
            for i in range(writes_per_thread):
                if i % 3 == 0:
                    store.create_subject(f"{seed}-{i}")
                else:
                    subject = store.create_subject(f"{seed}-{i}")
                    store.delete_face(store.add_faces(subject.id, _faces(1, seed * 100 + i))[0].id)
        except BaseException as error:
            errors.append(error)

    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        workers = [
            threading.Thread(target=enroll, args=(first if n % 2 else second, n)) for n in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert errors == []
        writes = threads * (5 * 1 + 10 * 3)  # per thread: 5 creates alone, 10 create+add+delete
        # Notifications arrive in commit order: the sequence numbers committed in order.
        payloads = [int(n.payload) for n in listener.notifies(timeout=10, stop_after=writes)]
    assert payloads == list(range(2, writes + 2))
    assert [seq for seq, *_ in _log(pg_url)] == list(range(1, writes + 2))
    assert first.change_seq() == second.change_seq() == writes + 1
    assert first.counts().subjects == threads * writes_per_thread
    first.close()
    second.close()


def test_an_outage_is_store_unavailable_and_the_same_store_recovers(
    pg_url: str, postgres_server: PostgresServer
) -> None:
    store = _open(_with_password(pg_url), timeout_s=1.0)
    store.pin("pack-a", DIM)
    subject = store.create_subject("before")
    postgres_server.stop()
    try:
        attempts: list[Callable[[], object]] = [
            lambda: store.create_subject("during"),  # a write
            lambda: store.get_subject(subject.id),  # a read
        ]
        for attempt in attempts:
            with pytest.raises(StoreUnavailableError) as outage:
                attempt()
            message = str(outage.value)
            assert "nothing was changed" in message
            assert "***" in message
            assert PASSWORD not in message
            assert not isinstance(outage.value, psycopg.Error)
            assert outage.value.__cause__ is None  # the psycopg error (with its own text) is not attached
    finally:
        postgres_server.start()
    # The pool replaces its broken connections; its reconnect attempts back off (from 1 s, doubling),
    # so the first calls after the restart may still be answered "unavailable", as a client retrying
    # a 503 would see.
    assert _eventually(lambda: store.get_subject(subject.id)).name == "before"
    store.add_faces(subject.id, _faces(1))
    assert store.counts() == GalleryCounts(subjects=1, faces=1)
    store.close()


def _eventually(call: Callable[[], T], within_s: float = 20.0) -> T:
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except StoreUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_an_unreachable_database_is_refused_at_open_without_its_password() -> None:
    url = f"postgresql://face:{PASSWORD}@127.0.0.1:1/gallery"
    with pytest.raises(StoreUnavailableError) as refused:
        _open(url, timeout_s=1.0)
    assert PASSWORD not in str(refused.value)
    assert "postgresql://face:***@127.0.0.1:1/gallery" in str(refused.value)


def test_messages_name_the_database_without_its_password(pg_url: str) -> None:
    store = _open(_with_password(pg_url))
    store.pin("pack-a", DIM)
    with pytest.raises(PackMismatchError) as mismatch:
        store.pin("pack-b", DIM)
    damaged = store.damaged("2 unusable face rows")
    for message in (str(mismatch.value), str(damaged)):
        assert PASSWORD not in message
        assert "postgres:***@" in message
    assert isinstance(damaged, DatabaseDamagedError)
    assert "2 unusable face rows" in str(damaged)
    store.close()


def _imported(subject: Subject, index_id: int, seed: int, *, crop: bool) -> ImportedFace:
    rng = np.random.default_rng(seed)
    stored = (
        StoredCrop(
            rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), rng.uniform(0, 10, (5, 2)).astype(np.float32)
        )
        if crop
        else None
    )
    record = FaceRecord(
        id=f"face-{index_id}",
        index_id=index_id,
        subject_id=subject.id,
        pack_id="pack-a",
        det_score=0.75,
        quality={"sharpness": 3.5},
        created_at="2024-01-02T03:04:05.000006+00:00",
        has_crop=crop,
    )
    return ImportedFace(record, unit_vectors(1, DIM, seed)[0], stored)


def test_import_batch_keeps_ids_and_later_faces_get_higher_index_ids(
    store: PostgresGalleryStore, pg_url: str
) -> None:
    subjects = [
        Subject(
            "subj-1", "Ada", {"team": "engines"}, "2024-01-01T00:00:00+00:00", "2024-01-02T00:00:00+00:00"
        ),
        Subject("subj-2", "Bob", {}, "2024-01-03T00:00:00+00:00", "2024-01-03T00:00:00+00:00"),
    ]
    faces = [
        _imported(subjects[0], 5, 1, crop=True),
        _imported(subjects[0], 9, 2, crop=False),
        _imported(subjects[1], 40, 3, crop=True),
    ]
    store.import_batch(subjects, faces)

    assert [s.id for s in store.list_subjects().items] == ["subj-1", "subj-2"]  # creation order kept
    ada = store.get_subject("subj-1")
    assert (ada.name, ada.metadata, ada.created_at, ada.updated_at, ada.face_count) == (
        "Ada",
        {"team": "engines"},
        "2024-01-01T00:00:00+00:00",
        "2024-01-02T00:00:00+00:00",
        2,
    )
    assert store.list_faces("subj-1") == [faces[0].record, faces[1].record]
    crop, original = store.get_crop("face-5"), faces[0].crop
    assert crop is not None
    assert original is not None
    np.testing.assert_array_equal(crop.image, original.image)
    ids, vectors = store.all_embeddings()
    assert ids.tolist() == [5, 9, 40]
    np.testing.assert_array_equal(vectors, np.stack([face.embedding for face in faces]))
    assert _log(pg_url)[-1] == (2, [5, 9, 40], [], False)  # one change for the whole batch

    later = store.add_faces("subj-2", _faces(1, seed=7))
    assert later[0].index_id > 40

    clash = _imported(subjects[1], 41, 4, crop=False)
    with pytest.raises(GalleryError, match="clashes"):
        store.import_batch([subjects[1]], [clash])  # subj-2 exists already: nothing of it lands
    assert store.counts().faces == 4
    assert store.change_seq() == 3


def test_reserve_index_ids_moves_the_sequence_past_them_in_one_logged_write_and_never_back(
    store: PostgresGalleryStore, pg_url: str
) -> None:
    assert store.last_index_id() == 0
    store.reserve_index_ids(0)  # nothing to reserve: no write
    assert store.change_seq() == 1  # the pin's
    subject = store.create_subject("s")
    (first,) = store.add_faces(subject.id, _faces(1))
    assert store.last_index_id() == first.index_id

    store.reserve_index_ids(first.index_id + 50)  # e.g. the ids of faces a copied gallery had deleted

    assert store.last_index_id() == first.index_id + 50
    assert _log(pg_url)[-1] == (4, [], [], False)  # a write like any other: bumped, logged, no ids
    store.reserve_index_ids(first.index_id + 10)  # below the sequence: it does not go back
    store.reserve_index_ids(first.index_id + 50)  # at it: nothing to do either
    assert store.last_index_id() == first.index_id + 50
    assert store.change_seq() == 4  # neither wrote
    (later,) = store.add_faces(subject.id, _faces(1, seed=1))
    assert later.index_id == first.index_id + 51


def test_migrations_are_idempotent_and_two_replicas_share_one_database(pg_url: str) -> None:
    first = _open(pg_url)
    second = _open(pg_url)  # a second opener on the same database: migrations find nothing to do
    assert apply_migrations(pg_url, COMPONENT, MIGRATIONS, timeout_s=3.0) == len(MIGRATIONS)
    with psycopg.connect(pg_url) as conn:
        versions = conn.execute(
            "SELECT version FROM schema_migrations WHERE component = %s ORDER BY version", (COMPONENT,)
        ).fetchall()
    assert [v for (v,) in versions] == list(range(1, len(MIGRATIONS) + 1))
    first.pin("pack-a", DIM)
    assert second.pin("pack-a", DIM) == PackPin("pack-a", DIM)
    subject = first.create_subject("shared")
    record = second.add_faces(subject.id, _faces(1))[0]
    assert first.get_face(record.id) == record
    assert first.change_seq() == second.change_seq() == 3
    first.close()
    second.close()


def test_must_exist_refuses_a_database_without_a_gallery(pg_url: str) -> None:
    options = StoreOptions(backend="postgresql", database_url=pg_url)
    with pytest.raises(GalleryError, match="no gallery"):
        open_postgres_store(Path("unused"), options, must_exist=True)
    _open(pg_url).close()  # schema, but no pin yet
    with pytest.raises(GalleryError, match="no pack pin"):
        open_postgres_store(Path("unused"), options, must_exist=True)
    pinned = _open(pg_url)
    pinned.pin("pack-a", DIM)
    pinned.close()
    opened = open_postgres_store(Path("unused"), options, must_exist=True)
    assert opened.store.pinned_pack() == PackPin("pack-a", DIM)
    opened.close()


def test_a_database_migrated_by_a_newer_build_is_refused(pg_url: str) -> None:
    _open(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO schema_migrations (component, version, description) VALUES (%s, 99, 'future')",
            (COMPONENT,),
        )
    with pytest.raises(SchemaVersionError, match="99"):
        _open(pg_url)


def test_rows_of_another_size_are_reported_not_searched(store: PostgresGalleryStore, pg_url: str) -> None:
    subject = store.create_subject("s")
    good = store.add_faces(subject.id, _faces(2))
    with psycopg.connect(pg_url) as conn:  # a hand edit: no vector index constrains the size here
        conn.execute("UPDATE faces SET embedding = '[1,0,0]' WHERE index_id = %s", (good[1].index_id,))
    ids, vectors, bad = store.searchable_embeddings()
    assert ids.tolist() == [good[0].index_id]
    assert vectors.shape == (1, DIM)
    assert [row.index_id for row in bad] == [good[1].index_id]
    assert "3 values" in bad[0].reason
    assert store.bad_rows() == bad
    assert store.quick_check() is None


def _vector_index_definition(url: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (HNSW_INDEX,)).fetchone()
    return None if row is None else str(row[0])


def test_searching_in_postgres_searches_the_faces_table(pg_url: str) -> None:
    options = StoreOptions(backend="postgresql", database_url=pg_url, vector_index=True)
    plain = open_postgres_store(Path("unused"), StoreOptions(backend="postgresql", database_url=pg_url))
    assert plain.in_database_search is None  # FAISS per replica, fed by the change feed
    plain.close()
    opened = open_postgres_store(Path("unused"), options)
    assert opened.in_database_search is not None
    opened.store.pin("pack-a", DIM)
    subject = opened.store.create_subject("s")
    vectors = unit_vectors(3, DIM, 5)
    records = opened.store.add_faces(subject.id, [NewFace(v, 0.9) for v in vectors])
    index = opened.in_database_search(DIM)
    scores, ids = index.search(vectors[1:2], 1)
    assert ids.tolist() == [[records[1].index_id]]
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    opened.close()


def test_the_vector_index_is_made_at_pin_and_remade_by_repinning(pg_url: str) -> None:
    store = _open(pg_url, vector_index=True)
    assert _vector_index_definition(pg_url) is None  # the size is not known before the pin
    store.pin("pack-a", DIM)
    assert f"vector({DIM})" in (_vector_index_definition(pg_url) or "")
    subject = store.create_subject("s")
    store.add_faces(subject.id, [*_faces(2), NewFace(unit_vectors(1, DIM, 9)[0], 0.9, crop=_crop())])

    with store.repinning(PackPin("pack-b", 4), delete_unconverted=True) as writer:
        for batch in store.iter_crops():  # a read inside the block: the repinning transaction's own
            writer.write([index_id for index_id, _ in batch], unit_vectors(len(batch), 4, 1))
    assert writer.written == 1
    assert store.pinned_pack() == PackPin("pack-b", 4)
    assert "vector(4)" in (_vector_index_definition(pg_url) or "")
    assert store.all_embeddings()[1].shape == (1, 4)
    assert _log(pg_url)[-1][2:] == ([1, 2], True)  # the faces without a crop went; replicas rebuild
    store.close()


def _crop() -> StoredCrop:
    rng = np.random.default_rng(0)
    return StoredCrop(
        rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), rng.uniform(0, 8, (5, 2)).astype(np.float32)
    )


def test_a_full_database_disk_counts_as_storage_full() -> None:
    assert is_storage_full(psycopg.errors.DiskFull("could not extend file: No space left on device"))
    assert not is_storage_full(psycopg.errors.OperationalError("server closed the connection"))
