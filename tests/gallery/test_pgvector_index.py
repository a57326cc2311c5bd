"""PgvectorIndex on a real PostgreSQL + pgvector: exact as FAISS flat, padding, deletes, the plan, outages."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from service.gallery.faiss_index import FaissIndex
from service.gallery.index import MISSING_ID, IndexKind, IndexOptions
from service.gallery.pgvector_index import MAX_EF_SEARCH, PgvectorIndex, ensure_hnsw_index, search_sql
from service.gallery.postgres_schema import COMPONENT, HNSW_INDEX, MIGRATIONS
from service.gallery.postgres_store import open_postgres_store
from service.gallery.store import NewFace, StoreOptions, StoreUnavailableError
from service.postgres.migrations import apply_migrations
from service.postgres.pool import PoolOptions, open_pool
from tests.gallery.conftest import unit_vectors
from tests.postgres_server import PostgresServer

DIM = 64


def identity_vectors(identities: int, per_identity: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Faces clustered by identity around a common direction (like real embeddings), and their centres."""
    rng = np.random.default_rng(seed)
    mean = unit_vectors(1, DIM, seed)[0]
    centres = mean + 0.4 * rng.standard_normal((identities, DIM)).astype(np.float32) / np.sqrt(DIM)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    faces = np.repeat(centres, per_identity, axis=0)
    faces += 0.15 * rng.standard_normal(faces.shape).astype(np.float32) / np.sqrt(DIM)
    faces /= np.linalg.norm(faces, axis=1, keepdims=True)
    return faces.astype(np.float32), centres.astype(np.float32)


def fresh_faces(centres: np.ndarray, count: int, seed: int) -> np.ndarray:
    """New photos of enrolled identities: what a real probe is."""
    rng = np.random.default_rng(seed)
    picked = centres[rng.integers(0, len(centres), size=count)]
    faces = picked + 0.15 * rng.standard_normal(picked.shape).astype(np.float32) / np.sqrt(DIM)
    unit: np.ndarray = (faces / np.linalg.norm(faces, axis=1, keepdims=True)).astype(np.float32)
    return unit


def insert_faces(url: str, vectors: np.ndarray) -> np.ndarray:
    """One write transaction as the store makes it (change_seq bumped); returns the new index ids."""
    subject = str(uuid.uuid4())
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE gallery_meta SET change_seq = change_seq + 1")
        conn.execute(
            "INSERT INTO subjects (id, name, created_at, updated_at) VALUES (%s, 'someone', 'now', 'now')",
            (subject,),
        )
        with conn.cursor() as cursor:
            with cursor.copy(
                "COPY faces (id, subject_id, embedding, pack_id, det_score, created_at) FROM STDIN"
            ) as copy:
                for vector in vectors:
                    text = "[" + ",".join(f"{value:.9g}" for value in vector.tolist()) + "]"
                    copy.write_row((str(uuid.uuid4()), subject, text, "test-pack", 0.99, "now"))
            cursor.execute("SELECT index_id FROM faces WHERE subject_id = %s ORDER BY index_id", (subject,))
            ids = np.asarray([row[0] for row in cursor.fetchall()], dtype=np.int64)
    return ids


def delete_faces(url: str, index_ids: np.ndarray) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE gallery_meta SET change_seq = change_seq + 1")
        conn.execute("DELETE FROM faces WHERE index_id = ANY(%s)", (index_ids.tolist(),))


@pytest.fixture
def gallery_url(pg_url: str) -> str:
    apply_migrations(pg_url, COMPONENT, MIGRATIONS, timeout_s=5)
    return pg_url


@pytest.fixture
def pool(gallery_url: str) -> Iterator[ConnectionPool]:
    opened = open_pool(
        gallery_url, PoolOptions(min_size=1, max_size=2, timeout_s=1.0), name="test", vectors=True
    )
    ensure_hnsw_index(opened, DIM)
    yield opened
    opened.close()


def exact_search(
    ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    flat = FaissIndex.build(DIM, ids, vectors, IndexOptions(hnsw_min_size=10**9, use_gpu=False))
    return flat.search(queries, k)


def test_search_matches_exact_flat_search(gallery_url: str, pool: ConnectionPool) -> None:
    vectors, centres = identity_vectors(identities=800, per_identity=5, seed=1)
    ids = insert_faces(gallery_url, vectors)
    queries = fresh_faces(centres, 300, seed=2)
    index = PgvectorIndex(pool, DIM, ef_search=64)

    scores, found = index.search(queries, 10)
    exact_scores, exact_ids = exact_search(ids, vectors, queries, 10)

    assert index.kind is IndexKind.PGVECTOR
    assert index.dim == DIM
    assert index.size == len(vectors)
    assert scores.shape == found.shape == (300, 10)
    assert scores.dtype == np.float32
    assert found.dtype == np.int64
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    recall_at_1 = float((found[:, 0] == exact_ids[:, 0]).mean())
    assert recall_at_1 >= 0.99
    # Scores are the cosines of the returned faces (to float32 rounding).
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    expected = np.asarray(
        [[by_id[i] @ q for i in row] for row, q in zip(found.tolist(), queries, strict=True)]
    )
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    np.testing.assert_allclose(scores[:, 0], exact_scores[:, 0], atol=1e-5)


def test_pads_when_k_exceeds_rows(gallery_url: str, pool: ConnectionPool) -> None:
    index = PgvectorIndex(pool, DIM, ef_search=40)
    empty_scores, empty_ids = index.search(unit_vectors(2, DIM, 3), 4)
    assert index.size == 0
    assert (empty_ids == MISSING_ID).all()
    assert np.isneginf(empty_scores).all()

    vectors = unit_vectors(3, DIM, 4)
    ids = insert_faces(gallery_url, vectors)
    scores, found = index.search(vectors[0], 5)  # a single row is one query

    assert index.size == 3
    assert found.shape == (1, 5)
    assert found[0, 0] == ids[0]
    assert sorted(found[0, :3].tolist()) == sorted(ids.tolist())
    assert (found[0, 3:] == MISSING_ID).all()
    assert np.isneginf(scores[0, 3:]).all()
    assert np.isfinite(scores[0, :3]).all()


def test_deleted_rows_are_never_returned_and_k_live_rows_still_come_back(
    gallery_url: str, pool: ConnectionPool
) -> None:
    vectors, centres = identity_vectors(identities=400, per_identity=5, seed=5)
    ids = insert_faces(gallery_url, vectors)
    queries = fresh_faces(centres, 50, seed=6)
    index = PgvectorIndex(pool, DIM, ef_search=40)
    # Delete every query's 30 nearest faces: the graph still holds them (no VACUUM yet).
    _, nearest = exact_search(ids, vectors, queries, 30)
    deleted = np.unique(nearest)
    delete_faces(gallery_url, deleted)
    live = ~np.isin(ids, deleted)

    scores, found = index.search(queries, 40)
    _, exact_ids = exact_search(ids[live], vectors[live], queries, 1)

    assert index.size == int(live.sum())
    assert not np.isin(found, deleted).any()
    assert (found != MISSING_ID).all()  # k live hits although the first 30+ graph hits were dead
    assert float((found[:, 0] == exact_ids[:, 0]).mean()) >= 0.98
    assert (np.diff(scores, axis=1) <= 0).all()


def test_k_above_the_ef_search_limit_is_exact(gallery_url: str, pool: ConnectionPool) -> None:
    vectors, centres = identity_vectors(identities=300, per_identity=5, seed=7)
    ids = insert_faces(gallery_url, vectors)
    queries = fresh_faces(centres, 3, seed=8)
    k = MAX_EF_SEARCH + 200

    scores, found = PgvectorIndex(pool, DIM, ef_search=40).search(queries, k)
    exact_scores, exact_ids = exact_search(ids, vectors, queries, k)

    assert (found != MISSING_ID).all()
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    for row in range(len(queries)):  # same sets (ties may swap places)
        assert set(found[row].tolist()) == set(exact_ids[row].tolist())


def test_search_plan_is_the_hnsw_index_scan(gallery_url: str, pool: ConnectionPool) -> None:
    insert_faces(gallery_url, identity_vectors(identities=400, per_identity=5, seed=9)[0])
    with pool.connection() as conn:
        conn.execute("ANALYZE faces")
        plan = "\n".join(
            str(row[0])
            for row in conn.execute(
                psycopg.sql.SQL("EXPLAIN ") + search_sql(DIM, 21), (unit_vectors(1, DIM, 10)[0],)
            ).fetchall()
        )
    assert f"Index Scan using {HNSW_INDEX} on faces" in plan, plan


def test_add_remove_rebuild_change_nothing_the_store_did_it(gallery_url: str, pool: ConnectionPool) -> None:
    vectors = unit_vectors(20, DIM, 11)
    ids = insert_faces(gallery_url, vectors)
    index = PgvectorIndex(pool, DIM, ef_search=40)
    before = index.search(vectors[:3], 5)

    index.add([10_000], unit_vectors(1, DIM, 12))
    assert index.remove(ids[:5]) == 0
    index.rebuild([], np.zeros((0, DIM), dtype=np.float32))

    after = index.search(vectors[:3], 5)
    assert index.size == 20
    np.testing.assert_array_equal(before[1], after[1])
    assert after[1][0, 0] == ids[0]


def test_size_follows_each_commit(gallery_url: str, pool: ConnectionPool) -> None:
    index = PgvectorIndex(pool, DIM, ef_search=40)
    assert index.size == 0
    ids = insert_faces(gallery_url, unit_vectors(7, DIM, 13))
    assert index.size == 7
    assert index.size == 7  # cached for this change_seq
    delete_faces(gallery_url, ids[:2])
    assert index.size == 5


def test_bad_queries_are_rejected(pool: ConnectionPool) -> None:
    index = PgvectorIndex(pool, DIM, ef_search=40)
    with pytest.raises(ValueError, match="k must be"):
        index.search(unit_vectors(1, DIM, 14), 0)
    with pytest.raises(ValueError, match="dims"):
        index.search(unit_vectors(1, DIM + 1, 14), 3)


def test_unavailable_server_raises_store_unavailable(
    gallery_url: str, pool: ConnectionPool, postgres_server: PostgresServer
) -> None:
    vectors = unit_vectors(10, DIM, 15)
    ids = insert_faces(gallery_url, vectors)
    index = PgvectorIndex(pool, DIM, ef_search=40)
    assert index.search(vectors[0], 1)[1][0, 0] == ids[0]

    postgres_server.stop()
    try:
        with pytest.raises(StoreUnavailableError, match="unavailable"):
            index.search(vectors[0], 1)
        with pytest.raises(StoreUnavailableError):
            index.size  # noqa: B018 - the property queries the database
    finally:
        postgres_server.start()

    assert index.search(vectors[0], 1)[1][0, 0] == ids[0]  # the pool replaced its broken connections


def test_store_commits_are_searchable_at_once(pg_url: str) -> None:
    """Through the real PostgreSQL store: its add and delete commits are what the index searches."""
    opened = open_postgres_store(
        Path("unused"), StoreOptions(backend="postgresql", database_url=pg_url, vector_index=True)
    )
    try:
        assert opened.in_database_search is not None
        opened.store.pin("test-pack", DIM)
        index = opened.in_database_search(DIM)
        vectors = unit_vectors(6, DIM, 16)
        subject = opened.store.create_subject("someone")
        records = opened.store.add_faces(subject.id, [NewFace(vector, 0.9) for vector in vectors])

        _, found = index.search(vectors, 1)
        assert found[:, 0].tolist() == [record.index_id for record in records]
        assert index.size == 6

        opened.store.delete_face(records[0].id)
        _, after = index.search(vectors[0], 6)
        assert index.size == 5
        assert records[0].index_id not in after[0].tolist()
        assert after[0, -1] == MISSING_ID
    finally:
        opened.close()
