"""PgvectorIndex: the gallery's search inside PostgreSQL, by pgvector's HNSW index (FACE_SEARCH=pgvector).

The ``faces`` table is the index. A store commit that adds or deletes faces has made the change
searchable on every replica at once, so ``add``, ``remove`` and ``rebuild`` have nothing to do, and
a replica holds no vectors in memory and builds nothing at start (FAISS-per-replica rebuilds from a
snapshot, then follows the change feed).

Each query row is one ``ORDER BY embedding::vector(D) <#> q LIMIT k``, which the planner answers
with the expression index of ``hnsw_index_sql`` (``<#>`` is the negative inner product, so scores
are ``-distance``). One search is one transaction, sent as one pipeline (a single round trip for
its settings, all its query rows and the commit). In it:

- ``hnsw.ef_search`` = max(``ef_search``, k), at most pgvector's 1000: a graph scan returns at most
  ef_search rows.
- ``hnsw.iterative_scan = relaxed_order`` (pgvector 0.8): deleted faces stay in the graph until
  VACUUM and are dropped by the heap's visibility check, so a plain scan can return fewer than k
  live rows right after a delete; an iterative scan keeps going until it has k. Its rows may be
  slightly out of order, so they are re-sorted here.
- k above 1000 (a caller widening its search a lot) is answered exactly by a sequential scan: no
  HNSW setting returns that many rows reliably, and at that point the gallery wants most of it.

``size`` counts the rows, cached per ``gallery_meta.change_seq`` (which every write transaction
bumps): a ``count(*)`` of a 1M-face table costs tens of milliseconds, more than the search.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from psycopg import sql
from psycopg_pool import ConnectionPool

from service.gallery.index import IndexKind, IntArray, no_hits, query_rows
from service.gallery.postgres_schema import hnsw_index_sql
from service.gallery.store import StoreUnavailableError
from service.pipeline.types import FloatArray
from service.postgres.pool import UNAVAILABLE_ERRORS, redact_url

MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search

_SEARCH_SQL = (
    "SELECT index_id, embedding::vector({dim}) <#> %s AS distance FROM faces ORDER BY distance LIMIT {k}"
)


def search_sql(embedding_size: int, k: int) -> sql.Composed:
    """The per-query statement (sizes inlined as literals: a generic plan then still sees the LIMIT)."""
    return sql.SQL(_SEARCH_SQL).format(dim=sql.Literal(int(embedding_size)), k=sql.Literal(int(k)))


@dataclass(frozen=True)
class _CachedSize:
    change_seq: int
    faces: int


class PgvectorIndex:
    """``SearchIndex`` over the ``faces`` table of a PostgreSQL gallery; pool opened with ``vectors=True``."""

    def __init__(self, pool: ConnectionPool, embedding_size: int, *, ef_search: int) -> None:
        if embedding_size < 1:
            raise ValueError(f"embedding size must be >= 1, got {embedding_size}")
        if ef_search < 1:
            raise ValueError(f"ef_search must be >= 1, got {ef_search}")
        self._pool = pool
        self._dim = embedding_size
        self._ef_search = min(ef_search, MAX_EF_SEARCH)
        self._cached_size: _CachedSize | None = None

    @property
    def kind(self) -> IndexKind:
        return IndexKind.PGVECTOR

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def size(self) -> int:
        """Rows of ``faces`` (every row is searchable: deleted faces are deleted rows)."""
        with _unavailable_as_store_error(self._pool), self._pool.connection() as conn:
            seq_row = conn.execute("SELECT change_seq FROM gallery_meta").fetchone()
            cached = self._cached_size
            if seq_row is not None and cached is not None and _int(seq_row[0]) == cached.change_seq:
                return cached.faces
            # Sequence and count from one statement: one snapshot, so they belong together.
            row = conn.execute("SELECT change_seq, (SELECT count(*) FROM faces) FROM gallery_meta").fetchone()
        if row is None:
            raise RuntimeError("gallery_meta has no row: the gallery schema is not migrated")
        self._cached_size = _CachedSize(_int(row[0]), _int(row[1]))
        return self._cached_size.faces

    # ------------------------------------------------------------------ changes: the store's commit did them

    def rebuild(self, ids: Sequence[int] | IntArray, vectors: FloatArray) -> None:
        """Nothing to do: the faces table is the index."""

    def add(self, ids: Sequence[int] | IntArray, vectors: FloatArray) -> None:
        """Nothing to do: the store's commit made the faces searchable on every replica."""

    def remove(self, ids: Sequence[int] | IntArray) -> int:
        """Nothing to do, and 0: the store's commit already deleted the rows, none is present here."""
        return 0

    # ------------------------------------------------------------------ search

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IntArray]:
        """Top-``k`` (scores, ids) per query row, best first; missing slots are (-inf, MISSING_ID)."""
        matrix = query_rows(queries, self._dim, k)
        scores, ids = no_hits(len(matrix), k)
        if len(matrix) == 0:
            return scores, ids
        statement = search_sql(self._dim, k)
        # One round trip for the whole transaction (pipeline mode): settings, every query, commit.
        with _unavailable_as_store_error(self._pool), self._pool.connection() as conn, conn.pipeline():
            with conn.transaction():
                if k > MAX_EF_SEARCH:
                    conn.execute("SELECT set_config('enable_indexscan', 'off', true)")
                else:
                    conn.execute(
                        "SELECT set_config('hnsw.ef_search', %s, true), "
                        "set_config('hnsw.iterative_scan', 'relaxed_order', true)",
                        (str(max(self._ef_search, k)),),
                    )
                cursors = [conn.execute(statement, (query,)) for query in matrix]
            results = [cursor.fetchall() for cursor in cursors]
        for row, hits in enumerate(results):
            if not hits:
                continue
            found = np.asarray([hit[0] for hit in hits], dtype=np.int64)
            found_scores = -np.asarray([hit[1] for hit in hits], dtype=np.float32)
            order = np.argsort(-found_scores, kind="stable")  # relaxed_order: nearly sorted
            scores[row, : len(hits)] = found_scores[order]
            ids[row, : len(hits)] = found[order]
        return scores, ids


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise TypeError(f"expected an integer from the database, got {type(value).__name__}")
    return value


@contextmanager
def _unavailable_as_store_error(pool: ConnectionPool) -> Iterator[None]:
    """Connection-level failures as ``StoreUnavailableError`` (answered 503 upstream); others pass."""
    try:
        yield
    except UNAVAILABLE_ERRORS as error:
        where = redact_url(pool.conninfo) if isinstance(pool.conninfo, str) else pool.name
        raise StoreUnavailableError(
            f"the gallery database at {where} is unavailable ({type(error).__name__}: {error}); retry shortly"
        ) from error


def ensure_hnsw_index(
    pool: ConnectionPool,
    embedding_size: int,
    *,
    m: int = 16,
    ef_construction: int = 64,
    maintenance_work_mem: str | None = None,
    parallel_workers: int | None = None,
) -> None:
    """Create the HNSW expression index on ``faces`` unless it exists (blocks writes while it builds).

    ``maintenance_work_mem`` (e.g. ``"2GB"``): the build is much faster while the graph fits in it
    (pgvector logs a notice when it does not). ``parallel_workers``: PostgreSQL's
    ``max_parallel_maintenance_workers`` for the build.
    """
    with _unavailable_as_store_error(pool), pool.connection() as conn, conn.transaction():
        if maintenance_work_mem is not None:
            conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (maintenance_work_mem,))
        if parallel_workers is not None:
            conn.execute(
                "SELECT set_config('max_parallel_maintenance_workers', %s, true)",
                (str(int(parallel_workers)),),
            )
        conn.execute(hnsw_index_sql(embedding_size, m=m, ef_construction=ef_construction))
