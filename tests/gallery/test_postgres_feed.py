"""The PostgreSQL gallery's read side: bulk embedding reads (COPY) and the change feed, on a real server."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from service.gallery.pg_vectors import read_embeddings
from service.gallery.postgres_feed import PostgresChangeFeed
from service.gallery.postgres_schema import COMPONENT, MIGRATIONS, NOTIFY_CHANNEL
from service.gallery.postgres_store import PostgresGalleryStore, open_postgres_store
from service.gallery.store import (
    EmbeddingSizeError,
    NewFace,
    PackPin,
    StoreOptions,
    StoreUnavailableError,
)
from service.postgres.migrations import apply_migrations
from service.postgres.pool import PoolOptions, open_pool, redact_url
from tests.gallery.conftest import unit_vectors
from tests.postgres_server import PostgresServer

DIM = 16


@pytest.fixture
def gallery_url(pg_url: str) -> str:
    """A fresh database with the gallery schema, pinned to embeddings of size DIM."""
    apply_migrations(pg_url, COMPONENT, MIGRATIONS, timeout_s=5)
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE gallery_meta SET pack_id = 'test-pack', embedding_size = %s", (DIM,))
        conn.execute(
            "INSERT INTO subjects (id, name, created_at, updated_at) VALUES ('s1', 'one', 'now', 'now')"
        )
    return pg_url


def connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(url)
    register_vector(conn)
    return conn


def insert_faces_direct(conn: psycopg.Connection[tuple[object, ...]], vectors: np.ndarray) -> list[int]:
    """Faces with these embeddings, without the change log (for reads that don't look at it)."""
    ids: list[int] = []
    for vector in vectors:
        row = conn.execute(
            "INSERT INTO faces (id, subject_id, embedding, pack_id, det_score, created_at) "
            "VALUES (gen_random_uuid()::text, 's1', %s, 'test-pack', 0.9, 'now') RETURNING index_id",
            (vector,),
        ).fetchone()
        assert row is not None
        ids.append(int(row[0]))  # type: ignore[call-overload]
    return ids


def as_array(value: object) -> np.ndarray:
    """A ``vector`` value as pgvector's psycopg loader returns it (a ``Vector``), as float32."""
    return np.asarray(value.to_numpy(), dtype=np.float32)  # type: ignore[attr-defined]


def select_embeddings(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[np.ndarray, np.ndarray]:
    rows = conn.execute("SELECT index_id, embedding FROM faces ORDER BY index_id").fetchall()
    ids = np.array([row[0] for row in rows], dtype=np.int64)
    vectors = np.array([as_array(row[1]) for row in rows], dtype=np.float32).reshape(len(rows), -1)
    return ids, vectors


# ---- read_embeddings ---------------------------------------------------------------------------------


def test_read_embeddings_matches_a_plain_select(gallery_url: str) -> None:
    with connect(gallery_url) as conn:
        inserted = insert_faces_direct(conn, unit_vectors(50, DIM, seed=1))
        conn.execute("DELETE FROM faces WHERE index_id = ANY(%s)", (inserted[10:15],))
        ids, vectors = read_embeddings(conn, DIM)
        expected_ids, expected_vectors = select_embeddings(conn)
    assert ids.dtype == np.int64
    assert vectors.dtype == np.float32
    assert vectors.flags.c_contiguous
    assert vectors.shape == (45, DIM)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(vectors, expected_vectors)
    assert list(ids) == inserted[:10] + inserted[15:]


def test_read_embeddings_of_an_empty_table(gallery_url: str) -> None:
    with connect(gallery_url) as conn:
        ids, vectors = read_embeddings(conn, DIM)
    assert ids.shape == (0,)
    assert ids.dtype == np.int64
    assert vectors.shape == (0, DIM)
    assert vectors.dtype == np.float32


def test_read_embeddings_with_a_where_clause_and_params(gallery_url: str) -> None:
    vectors_in = unit_vectors(20, DIM, seed=2)
    with connect(gallery_url) as conn:
        inserted = insert_faces_direct(conn, vectors_in)
        wanted = [inserted[3], inserted[7], inserted[19]]
        ids, vectors = read_embeddings(conn, DIM, "WHERE index_id = ANY(%s)", [wanted])
        none_ids, none_vectors = read_embeddings(conn, DIM, "WHERE index_id > %s", [inserted[-1]])
    assert list(ids) == wanted
    np.testing.assert_array_equal(vectors, vectors_in[[3, 7, 19]])
    assert none_ids.shape == (0,)
    assert none_vectors.shape == (0, DIM)


def test_read_embeddings_refuses_an_embedding_of_another_size(gallery_url: str) -> None:
    with connect(gallery_url) as conn:
        insert_faces_direct(conn, unit_vectors(3, DIM, seed=3))
        (odd,) = insert_faces_direct(conn, unit_vectors(1, DIM + 2, seed=4))
        insert_faces_direct(conn, unit_vectors(3, DIM, seed=5))
        with pytest.raises(EmbeddingSizeError, match=f"index_id {odd} has an embedding of size {DIM + 2}"):
            read_embeddings(conn, DIM)
        # Every row the same (wrong) size: the fast parse's checks, not the row count, catch it.
        conn.execute("DELETE FROM faces WHERE index_id <> %s", (odd,))
        with pytest.raises(EmbeddingSizeError, match=f"size {DIM + 2}"):
            read_embeddings(conn, DIM)


def test_read_embeddings_of_100k_faces_is_fast(gallery_url: str) -> None:
    dim = 128
    with connect(gallery_url) as conn:
        conn.execute(
            "INSERT INTO faces (id, subject_id, embedding, pack_id, det_score, created_at) "
            "SELECT 'f' || g, 's1', (SELECT array_agg(random()::real) FROM generate_series(1, %s) "
            "WHERE g > 0)::vector, 'test-pack', 0.9, 'now' FROM generate_series(1, 100000) AS g",
            (dim,),
        )
        conn.commit()
        started = time.perf_counter()
        ids, vectors = read_embeddings(conn, dim)
        elapsed = time.perf_counter() - started
        print(f"\nread_embeddings: 100k x {dim} in {elapsed:.3f} s")
        assert vectors.shape == (100_000, dim)
        assert np.all(np.diff(ids) > 0)
        sample = conn.execute(
            "SELECT index_id, embedding FROM faces WHERE index_id = ANY(%s) ORDER BY index_id",
            ([int(ids[0]), int(ids[54321]), int(ids[-1])],),
        ).fetchall()
    for row, position in zip(sample, (0, 54321, 99_999), strict=True):
        assert row[0] == ids[position]
        np.testing.assert_array_equal(as_array(row[1]), vectors[position])


# ---- the change feed, over rows written by the write-side contract ---------------------------------


@dataclass(frozen=True)
class Committed:
    seq: int
    added: list[int]


def commit_change(
    conn: psycopg.Connection[tuple[object, ...]],
    add: np.ndarray | None = None,
    remove: Sequence[int] = (),
    *,
    reset: bool = False,
) -> Committed:
    """One write transaction as postgres_schema.py's contract has it: seq first, then the log row, NOTIFY."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE gallery_meta SET change_seq = change_seq + 1 RETURNING change_seq"
        ).fetchone()
        assert row is not None
        seq = int(row[0])  # type: ignore[call-overload]
        added = insert_faces_direct(conn, add) if add is not None else []
        conn.execute("DELETE FROM faces WHERE index_id = ANY(%s)", (list(remove),))
        conn.execute(
            "INSERT INTO gallery_changes (seq, added, removed, reset) VALUES (%s, %s, %s, %s)",
            (seq, added, list(remove), reset),
        )
        conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(seq)))
    return Committed(seq, added)


@pytest.fixture
def writer(gallery_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    conn = psycopg.connect(gallery_url, autocommit=True)
    register_vector(conn)
    yield conn
    conn.close()


@pytest.fixture
def feed(gallery_url: str) -> Iterator[PostgresChangeFeed]:
    pool = open_pool(gallery_url, PoolOptions(min_size=1, max_size=2, timeout_s=2.0), name="feed-test")
    change_feed = PostgresChangeFeed(pool, gallery_url)
    yield change_feed
    change_feed.close()
    pool.close()


def test_changes_come_in_order_with_the_faces_still_there(
    feed: PostgresChangeFeed, writer: psycopg.Connection[tuple[object, ...]]
) -> None:
    first_vectors, second_vectors = unit_vectors(3, DIM, seed=10), unit_vectors(2, DIM, seed=11)
    before = time.time()
    first = commit_change(writer, first_vectors)
    second = commit_change(writer, second_vectors)
    third = commit_change(writer, remove=[first.added[1]])  # deleted: no longer among first's added
    fourth = commit_change(writer)  # e.g. a rename: no faces touched
    changes = feed.changes_since(0)
    assert changes is not None
    assert [change.seq for change in changes] == [1, 2, 3, 4]
    assert [first.seq, second.seq, third.seq, fourth.seq] == [1, 2, 3, 4]
    assert list(changes[0].added_ids) == [first.added[0], first.added[2]]
    np.testing.assert_array_equal(changes[0].added, first_vectors[[0, 2]])
    assert list(changes[1].added_ids) == second.added
    np.testing.assert_array_equal(changes[1].added, second_vectors)
    assert list(changes[2].removed_ids) == [first.added[1]]
    assert changes[2].added.shape == (0, DIM)
    assert changes[3].added_ids.size == 0
    assert changes[3].removed_ids.size == 0
    for change in changes:
        assert change.added_ids.dtype == np.int64
        assert change.removed_ids.dtype == np.int64
        assert change.added.dtype == np.float32
        assert not change.reset
        assert before - 5 < change.committed_at < time.time() + 5
    assert [change.committed_at for change in changes] == sorted(change.committed_at for change in changes)
    later = feed.changes_since(2)
    assert later is not None
    assert [change.seq for change in later] == [3, 4]
    assert feed.changes_since(4) == []


def test_a_reset_entry_says_so(
    feed: PostgresChangeFeed, writer: psycopg.Connection[tuple[object, ...]]
) -> None:
    commit_change(writer, unit_vectors(1, DIM, seed=12))
    commit_change(writer, reset=True)
    changes = feed.changes_since(0)
    assert changes is not None
    assert [change.reset for change in changes] == [False, True]


def test_changes_since_honours_the_limit(
    feed: PostgresChangeFeed, writer: psycopg.Connection[tuple[object, ...]]
) -> None:
    for seed in range(5):
        commit_change(writer, unit_vectors(1, DIM, seed=20 + seed))
    batch = feed.changes_since(0, limit=2)
    assert batch is not None
    assert [change.seq for change in batch] == [1, 2]
    rest = feed.changes_since(2, limit=10)
    assert rest is not None
    assert [change.seq for change in rest] == [3, 4, 5]
    with pytest.raises(ValueError, match="limit"):
        feed.changes_since(0, limit=0)


def test_a_trimmed_log_answers_none(
    feed: PostgresChangeFeed, writer: psycopg.Connection[tuple[object, ...]]
) -> None:
    for seed in range(4):
        commit_change(writer, unit_vectors(1, DIM, seed=30 + seed))
    writer.execute("DELETE FROM gallery_changes WHERE seq <= 2")
    assert feed.changes_since(0) is None
    assert feed.changes_since(1) is None
    kept = feed.changes_since(2)
    assert kept is not None
    assert [change.seq for change in kept] == [3, 4]
    writer.execute("DELETE FROM gallery_changes")  # trimmed whole while the database is at 4
    assert feed.changes_since(3) is None
    assert feed.changes_since(4) == []
    assert feed.changes_since(5) is None  # past the database: restored from an older backup


def test_snapshot_matches_the_sequence_and_the_faces(
    feed: PostgresChangeFeed, writer: psycopg.Connection[tuple[object, ...]]
) -> None:
    empty = feed.snapshot()
    assert empty.seq == 0
    assert empty.ids.shape == (0,)
    assert empty.embeddings.shape == (0, DIM)
    vectors = unit_vectors(4, DIM, seed=40)
    first = commit_change(writer, vectors)
    commit_change(writer, remove=[first.added[0]])
    snapshot = feed.snapshot()
    assert snapshot.seq == 2
    assert list(snapshot.ids) == first.added[1:]
    np.testing.assert_array_equal(snapshot.embeddings, vectors[1:])


def test_snapshot_of_an_unpinned_gallery_is_empty(pg_url: str) -> None:
    apply_migrations(pg_url, COMPONENT, MIGRATIONS, timeout_s=5)
    pool = open_pool(pg_url, PoolOptions(min_size=1, max_size=1), name="feed-test")
    try:
        snapshot = PostgresChangeFeed(pool, pg_url).snapshot()
    finally:
        pool.close()
    assert snapshot.seq == 0
    assert snapshot.ids.shape == (0,)
    assert snapshot.embeddings.shape == (0, 0)


def test_oldest_unapplied_age(
    feed: PostgresChangeFeed, writer: psycopg.Connection[tuple[object, ...]]
) -> None:
    assert feed.oldest_unapplied_age_s(0) == 0.0
    commit_change(writer, unit_vectors(1, DIM, seed=50))
    writer.execute("UPDATE gallery_changes SET committed_at = clock_timestamp() - interval '30 seconds'")
    commit_change(writer, unit_vectors(1, DIM, seed=51))
    assert 30.0 <= feed.oldest_unapplied_age_s(0) < 60.0
    assert 0.0 <= feed.oldest_unapplied_age_s(1) < 5.0
    assert feed.oldest_unapplied_age_s(2) == 0.0


def test_wait_for_change_wakes_on_a_commit_and_times_out_without_one(
    feed: PostgresChangeFeed, writer: psycopg.Connection[tuple[object, ...]]
) -> None:
    started = time.monotonic()
    assert feed.wait_for_change(0.3) is False
    assert time.monotonic() - started >= 0.25
    commit_change(writer, unit_vectors(1, DIM, seed=60))  # sent while listening: delivered next wait
    assert feed.wait_for_change(2.0) is True
    woken = threading.Event()

    def commit_soon() -> None:
        time.sleep(0.3)
        commit_change(writer, unit_vectors(1, DIM, seed=61))
        commit_change(writer, unit_vectors(1, DIM, seed=62))
        woken.set()

    thread = threading.Thread(target=commit_soon)
    thread.start()
    started = time.monotonic()
    assert feed.wait_for_change(10.0) is True
    assert time.monotonic() - started < 5.0
    thread.join()
    woken.wait(5)
    time.sleep(0.2)
    feed.wait_for_change(0.5)  # the second commit's notice, if it came apart from the first
    assert feed.wait_for_change(0.3) is False  # both were drained: nothing pending


def test_a_rolled_back_write_announces_nothing(
    feed: PostgresChangeFeed, writer: psycopg.Connection[tuple[object, ...]]
) -> None:
    assert feed.wait_for_change(0.1) is False  # listening from here on
    with contextlib.suppress(RuntimeError), writer.transaction():
        writer.execute("SELECT pg_notify(%s, '1')", (NOTIFY_CHANNEL,))
        raise RuntimeError("rolled back")
    assert feed.wait_for_change(0.5) is False


def test_close_does_not_wait_for_a_wait_in_progress(feed: PostgresChangeFeed) -> None:
    assert feed.wait_for_change(0.1) is False
    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.append(feed.wait_for_change(1.0)))
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    feed.close()
    assert time.monotonic() - started < 0.5
    thread.join(3.0)
    assert not thread.is_alive()
    assert results == [False]
    assert feed.wait_for_change(5.0) is False  # closed: returns at once
    assert time.monotonic() - started < 3.0


def test_the_feed_raises_unavailable_while_the_database_is_down_and_recovers(
    postgres_server: PostgresServer,
    gallery_url: str,
    feed: PostgresChangeFeed,
    writer: psycopg.Connection[tuple[object, ...]],
) -> None:
    assert feed.wait_for_change(0.1) is False  # listening from here on
    commit_change(writer, unit_vectors(1, DIM, seed=70))
    assert feed.wait_for_change(2.0) is True
    password_free_url = redact_url(gallery_url)
    postgres_server.stop()
    try:
        with pytest.raises(StoreUnavailableError) as raised:
            feed.wait_for_change(2.0)
        assert password_free_url in str(raised.value)
        with pytest.raises(StoreUnavailableError):
            feed.wait_for_change(0.5)  # reconnecting fails too
        with pytest.raises(StoreUnavailableError):
            feed.snapshot()
        with pytest.raises(StoreUnavailableError):
            feed.changes_since(0)
        with pytest.raises(StoreUnavailableError):
            feed.oldest_unapplied_age_s(0)
    finally:
        postgres_server.start()
    assert feed.wait_for_change(0.2) is False  # listening again
    with psycopg.connect(gallery_url, autocommit=True) as new_writer:
        register_vector(new_writer)
        commit_change(new_writer, unit_vectors(1, DIM, seed=71))
    assert feed.wait_for_change(5.0) is True
    changes = feed.changes_since(0)
    assert changes is not None
    assert [change.seq for change in changes] == [1, 2]
    assert feed.snapshot().seq == 2


def test_unavailable_messages_never_show_the_password(feed: PostgresChangeFeed, tmp_path: Path) -> None:
    url_with_password = f"postgresql://postgres:s3cret-pw@/gallery?host={tmp_path}"  # no server there
    change_feed = PostgresChangeFeed(feed._pool, url_with_password, connect_timeout_s=1)
    with pytest.raises(StoreUnavailableError) as raised:
        change_feed.wait_for_change(0.1)
    assert "s3cret-pw" not in str(raised.value)
    assert redact_url(url_with_password) in str(raised.value)


def test_faces_of_another_size_are_left_out_of_the_feed(
    feed: PostgresChangeFeed, writer: psycopg.Connection[tuple[object, ...]]
) -> None:
    """Not searchable (the store's bad_rows reports them): a snapshot or a change skips, not fails."""
    good = unit_vectors(2, DIM, seed=80)
    first = commit_change(writer, good)
    odd = commit_change(writer, unit_vectors(1, DIM + 1, seed=81))
    snapshot = feed.snapshot()
    assert list(snapshot.ids) == first.added
    np.testing.assert_array_equal(snapshot.embeddings, good)
    changes = feed.changes_since(0)
    assert changes is not None
    assert list(changes[0].added_ids) == first.added
    assert odd.added
    assert changes[1].added_ids.size == 0


# ---- the change feed, over rows the real store writes ----------------------------------------------


@dataclass
class StoreAndFeed:
    store: PostgresGalleryStore
    feed: PostgresChangeFeed


@pytest.fixture
def store_and_feed(pg_url: str, tmp_path: Path) -> Iterator[StoreAndFeed]:
    """The store and feed ``open_postgres_store`` makes (what a replica runs)."""
    options = StoreOptions(
        backend="postgresql", database_url=pg_url, pool_min_size=1, pool_max_size=2, timeout_s=2.0
    )
    opened = open_postgres_store(tmp_path, options)
    try:
        assert isinstance(opened.store, PostgresGalleryStore)
        assert isinstance(opened.feed, PostgresChangeFeed)
        yield StoreAndFeed(opened.store, opened.feed)
    finally:
        opened.close()


def new_faces(count: int, dim: int, seed: int) -> list[NewFace]:
    return [NewFace(vector, det_score=0.9) for vector in unit_vectors(count, dim, seed)]


def test_the_feed_follows_the_real_stores_writes(store_and_feed: StoreAndFeed) -> None:
    store, feed = store_and_feed.store, store_and_feed.feed
    assert feed.wait_for_change(0.1) is False  # listening from here on
    store.pin("pack-a", DIM)
    alice = store.create_subject("alice")
    bob = store.create_subject("bob")
    alice_faces = store.add_faces(alice.id, new_faces(3, DIM, seed=90))
    bob_faces = store.add_faces(bob.id, new_faces(2, DIM, seed=91))
    store.delete_face(alice_faces[1].id)
    store.delete_subject(bob.id)
    assert feed.wait_for_change(2.0) is True
    changes = feed.changes_since(0)
    assert changes is not None
    assert [change.seq for change in changes] == list(range(1, store.change_seq() + 1))
    by_added = [change for change in changes if change.added_ids.size]
    assert [list(change.added_ids) for change in by_added] == [
        [alice_faces[0].index_id, alice_faces[2].index_id]
    ]
    removed = [list(change.removed_ids) for change in changes if change.removed_ids.size]
    assert removed == [[alice_faces[1].index_id], [face.index_id for face in bob_faces]]
    store_ids, store_embeddings = store.all_embeddings()
    np.testing.assert_array_equal(by_added[0].added, store_embeddings)
    snapshot = feed.snapshot()
    assert snapshot.seq == store.change_seq()
    np.testing.assert_array_equal(snapshot.ids, store_ids)
    np.testing.assert_array_equal(snapshot.embeddings, store_embeddings)
    assert feed.oldest_unapplied_age_s(snapshot.seq) == 0.0
    assert feed.oldest_unapplied_age_s(0) >= 0.0


def test_a_repinning_through_the_store_is_a_reset_entry(store_and_feed: StoreAndFeed) -> None:
    store, feed = store_and_feed.store, store_and_feed.feed
    store.pin("pack-a", DIM)
    subject = store.create_subject("carol")
    faces = store.add_faces(subject.id, new_faces(2, DIM, seed=92))
    before = store.change_seq()
    new_dim = DIM * 2
    replacement = unit_vectors(2, new_dim, seed=93)
    with store.repinning(PackPin("pack-b", new_dim)) as writer:
        writer.write([face.index_id for face in faces], replacement)
    changes = feed.changes_since(before)
    assert changes is not None
    assert [change.reset for change in changes] == [True]
    snapshot = feed.snapshot()
    assert snapshot.embeddings.shape == (2, new_dim)
    np.testing.assert_array_equal(snapshot.embeddings, replacement)
    earlier = feed.changes_since(0)  # the first add, read now: its faces carry the new embeddings
    assert earlier is not None
    assert [change.added.shape for change in earlier if change.added_ids.size] == [(2, new_dim)]
