"""FaissIndex: FAISS inner-product search over unit embeddings (cosine similarity), id-mapped.

Exact search (``IndexFlatIP``) below ``hnsw_min_size`` faces: exact, and fast enough there. From
that size on, HNSW (``IndexHNSWFlat``, inner product): sub-linear, approximate. The kind is chosen
whenever the index is built or rebuilt (never by ``add``), and reported by ``kind``.

HNSW (and a GPU flat index) cannot delete vectors. Deleted ids are kept in a set and filtered out
of every search, which over-fetches so that ``k`` live hits still come back; the index is rebuilt
without them once they exceed ``compact_deleted_fraction`` of it. No deleted face is ever returned.
Not thread-safe by itself (see ``SearchIndex``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np

from service.gallery.index import IndexKind, IndexOptions, IntArray, no_hits, query_rows
from service.pipeline.types import FloatArray

logger = logging.getLogger(__name__)

# Query batches up to this size are searched on the calling thread alone (see _serial_openmp).
SERIAL_SEARCH_MAX_QUERIES = 16


def faiss_gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class FaissIndex:
    """An id-mapped inner-product index; build with ``FaissIndex.build`` or ``FaissIndex(dim)``."""

    def __init__(self, dim: int, options: IndexOptions | None = None) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self._dim = dim
        self._options = options or IndexOptions()
        self._deleted: set[int] = set()
        self._deleted_array: IntArray = np.zeros(0, dtype=np.int64)
        self._gpu_resources: Any = None
        self._make(IndexKind.FLAT)

    @classmethod
    def build(
        cls, dim: int, ids: Sequence[int] | IntArray, vectors: FloatArray, options: IndexOptions | None = None
    ) -> FaissIndex:
        index = cls(dim, options)
        index.rebuild(ids, vectors)
        return index

    # ------------------------------------------------------------------ properties

    @property
    def kind(self) -> IndexKind:
        return self._kind

    @property
    def on_gpu(self) -> bool:
        return self._gpu_resources is not None

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def size(self) -> int:
        """Live vectors (deleted ones excluded)."""
        return int(self._index.ntotal) - len(self._deleted)

    @property
    def deleted_count(self) -> int:
        """Deleted vectors still held (HNSW/GPU) until the next compaction."""
        return len(self._deleted)

    # ------------------------------------------------------------------ changes

    def rebuild(self, ids: Sequence[int] | IntArray, vectors: FloatArray) -> None:
        """Replace the whole content; picks flat or HNSW from the new size."""
        id_array, matrix = self._checked(ids, vectors)
        if len(np.unique(id_array)) != len(id_array):
            raise ValueError("duplicate ids in rebuild")
        self._deleted.clear()
        self._deleted_array = np.zeros(0, dtype=np.int64)
        self._make(IndexKind.HNSW if len(id_array) >= self._options.hnsw_min_size else IndexKind.FLAT)
        if len(id_array):
            self._index.add_with_ids(matrix, id_array)
        logger.info(
            "face index rebuilt: %s, %d vectors%s", self._kind, self.size, " (GPU)" if self.on_gpu else ""
        )

    def add(self, ids: Sequence[int] | IntArray, vectors: FloatArray) -> None:
        """Add vectors under new ids (ids must not be in the index already)."""
        id_array, matrix = self._checked(ids, vectors)
        if not len(id_array):
            return
        if self._deleted and not self._deleted.isdisjoint(id_array.tolist()):
            self.compact()  # a re-used id must not revive its deleted twin in the graph
        # The kind is not switched here: building HNSW takes about a minute per 100k vectors on one
        # core, too long to hold the gallery's lock in a request. A flat index stays exact (only
        # slower) past the threshold; the next rebuild (restart, compaction) picks HNSW.
        self._index.add_with_ids(matrix, id_array)

    def remove(self, ids: Sequence[int] | IntArray) -> int:
        """Remove ids; returns how many were present. Absent ids are ignored."""
        id_array = np.unique(np.asarray(ids, dtype=np.int64))
        if not len(id_array):
            return 0
        if self._removes_in_place:
            return int(self._index.remove_ids(faiss.IDSelectorBatch(id_array)))
        present = [int(i) for i in id_array if int(i) not in self._deleted and self._contains(int(i))]
        self._deleted.update(present)
        self._deleted_array = np.fromiter(self._deleted, dtype=np.int64, count=len(self._deleted))
        if len(self._deleted) > self._options.compact_deleted_fraction * max(int(self._index.ntotal), 1):
            self.compact()
        return len(present)

    def compact(self) -> None:
        """Rebuild without the deleted vectors (and re-choose flat/HNSW for the live size)."""
        self.rebuild(*self._live_content())

    # ------------------------------------------------------------------ search

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IntArray]:
        """Top-``k`` (scores, ids) per query row, best first; missing slots are (-inf, -1)."""
        matrix = query_rows(queries, self._dim, k)
        scores, ids = no_hits(len(matrix), k)
        total = int(self._index.ntotal)
        if total == 0 or len(matrix) == 0:
            return scores, ids
        fetch = min(total, k + (min(len(self._deleted), 4 * k) if self._deleted else 0))
        while True:
            if self._kind is IndexKind.HNSW:
                self._inner.hnsw.efSearch = max(self._options.hnsw_ef_search, fetch)
            with _serial_openmp(len(matrix) <= SERIAL_SEARCH_MAX_QUERIES):
                raw_scores, raw_ids = self._index.search(matrix, fetch)
            valid = raw_ids >= 0
            if self._deleted:
                valid &= ~np.isin(raw_ids, self._deleted_array)
            if fetch >= total or int(valid.sum(axis=1).min()) >= k:
                break
            fetch = min(total, fetch * 2)  # too many deleted hits: look further
        for row in range(len(matrix)):
            keep = valid[row]
            found = min(k, int(keep.sum()))
            scores[row, :found] = raw_scores[row][keep][:found]
            ids[row, :found] = raw_ids[row][keep][:found]
        return scores, ids

    # ------------------------------------------------------------------ internals

    @property
    def _removes_in_place(self) -> bool:
        return self._kind is IndexKind.FLAT and not self.on_gpu

    def _make(self, kind: IndexKind) -> None:
        self._kind = kind
        self._gpu_resources = None
        inner: Any
        if kind is IndexKind.HNSW:
            inner = faiss.IndexHNSWFlat(self._dim, self._options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self._options.hnsw_ef_construction
            inner.hnsw.efSearch = self._options.hnsw_ef_search
        elif self._options.use_gpu and faiss_gpu_available():
            self._gpu_resources = faiss.StandardGpuResources()
            inner = faiss.GpuIndexFlatIP(self._gpu_resources, self._dim)
        else:
            inner = faiss.IndexFlatIP(self._dim)
        self._inner = inner  # keep a Python reference: the id map does not own it
        self._index = faiss.IndexIDMap2(inner)

    def _checked(self, ids: Sequence[int] | IntArray, vectors: FloatArray) -> tuple[IntArray, FloatArray]:
        id_array = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        if (
            matrix.ndim != 2
            or matrix.shape[0] != len(id_array)
            or (len(id_array) and matrix.shape[1] != self._dim)
        ):
            raise ValueError(
                f"need ({len(id_array)}, {self._dim}) vectors for {len(id_array)} ids, got {matrix.shape}"
            )
        if (id_array < 0).any():
            raise ValueError("ids must be >= 0")
        return id_array, matrix.reshape(len(id_array), self._dim)

    def _contains(self, index_id: int) -> bool:
        try:
            self._index.reconstruct(index_id)  # IndexIDMap2 looks the id up in its reverse map
        except RuntimeError:
            return False
        return True

    def _live_content(self) -> tuple[IntArray, FloatArray]:
        total = int(self._index.ntotal)
        if total == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self._dim), dtype=np.float32)
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vectors = self._inner.reconstruct_n(0, total)
        keep = ~np.isin(ids, self._deleted_array) if self._deleted else np.ones(total, dtype=bool)
        return ids[keep], np.ascontiguousarray(vectors[keep], dtype=np.float32)


@contextmanager
def _serial_openmp(enabled: bool) -> Iterator[None]:
    """Run faiss on the calling thread only, for searches of a few queries.

    faiss opens an OpenMP parallel region even for one query (the id map's label translation, the
    HNSW query loop). A few queries gain nothing from it, and on cores busy with inference the
    search then waits for a descheduled worker: on 2 loaded cores, p50 of one HNSW query over 12k
    vectors went from 0.1 ms to 24 ms. ``omp_set_num_threads`` changes the calling thread's
    setting only, so concurrent searches on other threads keep theirs.
    """
    if not enabled:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)
