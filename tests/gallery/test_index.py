"""FaissIndex: exact results, HNSW recall, automatic kind, and deletes without ghost hits."""

from __future__ import annotations

import numpy as np
import pytest

from service.gallery.faiss_index import FaissIndex, faiss_gpu_available
from service.gallery.index import MISSING_ID, IndexKind, IndexOptions
from tests.gallery.conftest import unit_vectors

DIM = 32
CPU_FLAT = IndexOptions(hnsw_min_size=10**9, use_gpu=False)
CPU_HNSW = IndexOptions(hnsw_min_size=1, hnsw_m=16, hnsw_ef_construction=80, hnsw_ef_search=64, use_gpu=False)


def _brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    return ids[order]


def test_flat_search_is_exact() -> None:
    vectors, queries = unit_vectors(500, DIM, 0), unit_vectors(20, DIM, 1)
    ids = np.arange(500, dtype=np.int64) * 3 + 100  # arbitrary, non-contiguous ids
    index = FaissIndex.build(DIM, ids, vectors, CPU_FLAT)
    assert index.kind is IndexKind.FLAT
    assert index.size == 500
    scores, found = index.search(queries, 10)
    np.testing.assert_array_equal(found, _brute_force(vectors, ids, queries, 10))
    np.testing.assert_allclose(scores, np.sort(queries @ vectors.T, axis=1)[:, ::-1][:, :10], atol=1e-5)


def test_hnsw_recall_against_exact_search() -> None:
    vectors, queries = unit_vectors(4000, DIM, 2), unit_vectors(100, DIM, 3)
    ids = np.arange(4000, dtype=np.int64)
    hnsw = FaissIndex.build(DIM, ids, vectors, CPU_HNSW)
    assert hnsw.kind is IndexKind.HNSW
    _, approximate = hnsw.search(queries, 10)
    exact = _brute_force(vectors, ids, queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact, strict=True)])
    assert recall >= 0.95, recall
    # A stored vector finds itself first.
    _, self_hits = hnsw.search(vectors[:50], 1)
    assert np.mean(self_hits[:, 0] == ids[:50]) >= 0.98


def test_kind_is_chosen_from_the_size_at_each_rebuild() -> None:
    options = IndexOptions(hnsw_min_size=100, use_gpu=False)
    vectors = unit_vectors(150, DIM, 4)
    index = FaissIndex.build(DIM, np.arange(99), vectors[:99], options)
    assert index.kind is IndexKind.FLAT
    index.add(np.arange(99, 150), vectors[99:])  # past the threshold: stays flat (exact) until a rebuild
    assert index.kind is IndexKind.FLAT
    assert index.size == 150
    index.rebuild(np.arange(150), vectors)
    assert index.kind is IndexKind.HNSW
    _, found = index.search(vectors[140:141], 1)
    assert found[0, 0] == 140
    index.remove(np.arange(0, 100))  # most of it deleted: compacted, and small again
    assert index.kind is IndexKind.FLAT
    assert index.size == 50
    assert index.deleted_count == 0


@pytest.mark.parametrize("options", [CPU_FLAT, CPU_HNSW], ids=["flat", "hnsw"])
def test_deleted_ids_never_come_back(options: IndexOptions) -> None:
    vectors = unit_vectors(1000, DIM, 5)
    ids = np.arange(1000, dtype=np.int64)
    index = FaissIndex.build(DIM, ids, vectors, options)
    removed = ids[::10]  # 10%: below the compaction fraction, so HNSW keeps them as tombstones
    assert index.remove(removed) == len(removed)
    assert index.remove(removed[:5]) == 0  # already gone
    assert index.remove([123456]) == 0  # never there
    assert index.size == 900
    # Each removed vector is its own nearest neighbour: searching for it is the hardest case.
    _, found = index.search(vectors[removed], 20)
    assert not np.isin(found, removed).any()
    assert (found != MISSING_ID).all()  # over-fetching still returns k live hits
    # Deleting most of the rest compacts HNSW (the kind is re-chosen); still no ghosts.
    second = np.setdiff1d(ids, removed)[:700]
    assert index.remove(second) == 700
    assert index.deleted_count == 0
    gone = np.concatenate([removed, second])
    assert index.size == 1000 - len(gone)
    _, found = index.search(vectors, 5)
    assert not np.isin(found, gone).any()
    assert (found != MISSING_ID).all()


def test_fewer_vectors_than_k_and_empty_index() -> None:
    empty = FaissIndex(DIM, CPU_FLAT)
    scores, found = empty.search(unit_vectors(2, DIM, 6), 3)
    assert (found == MISSING_ID).all()
    assert np.isneginf(scores).all()
    small = FaissIndex.build(DIM, [7, 8], unit_vectors(2, DIM, 7), CPU_FLAT)
    _, found = small.search(unit_vectors(1, DIM, 8), 5)
    assert sorted(found[0, :2].tolist()) == [7, 8]
    assert (found[0, 2:] == MISSING_ID).all()


def test_bad_input_is_rejected() -> None:
    index = FaissIndex(DIM, CPU_FLAT)
    with pytest.raises(ValueError, match="vectors"):
        index.add([1, 2], unit_vectors(3, DIM, 0))
    with pytest.raises(ValueError, match="dims"):
        index.search(np.zeros((1, DIM + 1), dtype=np.float32), 1)
    with pytest.raises(ValueError, match="duplicate"):
        index.rebuild([1, 1], unit_vectors(2, DIM, 0))


@pytest.mark.gpu
def test_gpu_flat_index_matches_cpu() -> None:
    if not faiss_gpu_available():
        pytest.skip("faiss-gpu with a visible GPU is not installed")
    vectors, queries = unit_vectors(2000, DIM, 9), unit_vectors(10, DIM, 10)
    ids = np.arange(2000, dtype=np.int64)
    gpu = FaissIndex.build(DIM, ids, vectors, IndexOptions(hnsw_min_size=10**9, use_gpu=True))
    assert gpu.on_gpu
    _, found = gpu.search(queries, 5)
    np.testing.assert_array_equal(found, _brute_force(vectors, ids, queries, 5))
    gpu.remove(found[:, 0])
    _, again = gpu.search(queries, 5)
    assert not np.isin(again, found[:, 0]).any()
