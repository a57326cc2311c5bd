"""The search index's contract: inner-product search over unit embeddings (cosine), by face id.

``SearchIndex`` is what the ``Gallery`` uses; ``FaissIndex`` (``service/gallery/faiss_index.py``)
is today's one implementation. Not thread-safe by itself: callers serialize writers and readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from service.pipeline.types import FloatArray

if TYPE_CHECKING:
    from service.settings import Settings

IntArray = npt.NDArray[np.int64]
MISSING_ID = -1  # an id slot with no hit (fewer than k live vectors)


class IndexKind(StrEnum):
    FLAT = "flat"  # exact inner product
    HNSW = "hnsw"  # approximate, graph based
    PGVECTOR = "pgvector"  # searched inside PostgreSQL (pgvector HNSW), see pgvector_index.py


@dataclass(frozen=True)
class IndexOptions:
    hnsw_min_size: int = 50_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 256  # the Settings default (see service/settings.py)
    use_gpu: bool = True  # flat index on the GPU when faiss-gpu and a GPU are present
    compact_deleted_fraction: float = 0.2

    @classmethod
    def from_settings(cls, settings: Settings) -> IndexOptions:
        return cls(
            hnsw_min_size=settings.index_hnsw_min_size,
            hnsw_m=settings.hnsw_m,
            hnsw_ef_construction=settings.hnsw_ef_construction,
            hnsw_ef_search=settings.hnsw_ef_search,
            use_gpu=settings.faiss_gpu,
        )


class SearchIndex(Protocol):
    """An id-mapped inner-product index: no deleted id is ever returned by ``search``."""

    @property
    def kind(self) -> IndexKind: ...

    @property
    def dim(self) -> int: ...

    @property
    def size(self) -> int:
        """Live vectors (deleted ones excluded)."""
        ...

    def rebuild(self, ids: Sequence[int] | IntArray, vectors: FloatArray) -> None:
        """Replace the whole content."""
        ...

    def add(self, ids: Sequence[int] | IntArray, vectors: FloatArray) -> None:
        """Add vectors under new ids."""
        ...

    def remove(self, ids: Sequence[int] | IntArray) -> int:
        """Remove ids; returns how many were present. Absent ids are ignored."""
        ...

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IntArray]:
        """Top-``k`` (scores, ids) per query row, best first; missing slots are (-inf, MISSING_ID)."""
        ...


def query_rows(queries: FloatArray, dim: int, k: int) -> FloatArray:
    """``queries`` as a C-contiguous float32 (M, dim) matrix, or a ValueError saying what is wrong."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    matrix = np.ascontiguousarray(queries, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise ValueError(f"queries of shape {matrix.shape}; need (M, {dim}) dims")
    return matrix


def no_hits(rows: int, k: int) -> tuple[FloatArray, IntArray]:
    """(scores, ids) with every slot missing: (-inf, MISSING_ID)."""
    return (
        np.full((rows, k), -np.inf, dtype=np.float32),
        np.full((rows, k), MISSING_ID, dtype=np.int64),
    )
