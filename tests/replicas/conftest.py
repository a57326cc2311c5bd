"""Fixtures for the replica tests: real ``face-service serve`` processes sharing one real PostgreSQL.

Every replica is a child process (``benchmarks.local_server.LocalServer``) with its own data dir and
port, the same ``FACE_DATABASE_URL`` (a fresh database per test) and the same admin key
(``FACE_API_KEY``), following the change feed with a short poll interval. Helpers here read what a
replica says about itself: its readiness, its place in the change feed, its index size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.load_test import FaceImages
from benchmarks.local_server import LocalServer

ADMIN_KEY = "replica-test-admin-key-0123456789"
FEED_POLL_INTERVAL_S = 0.5
DB_TIMEOUT_S = 2.0

ReplicaFactory = Callable[..., LocalServer]


@pytest.fixture(scope="session")
def johns(shared_faces: Path) -> FaceImages:
    """dlib_johns: five people, eleven 150×150 JPEG chips each."""
    return FaceImages.from_dir(shared_faces / "dlib_johns")


@pytest.fixture
def make_replica(tmp_path: Path, default_pack_dir: Path, pg_url: str) -> Iterator[ReplicaFactory]:
    """Build (not start) replicas of one gallery in the test's fresh database; all killed at the end."""
    replicas: list[LocalServer] = []

    def make(name: str, **env: str) -> LocalServer:
        settings = {
            "FACE_MODELS_DIR": str(default_pack_dir.parent),
            "FACE_PACK": default_pack_dir.name,
            "FACE_DATABASE_URL": pg_url,
            "FACE_FEED_POLL_INTERVAL_S": str(FEED_POLL_INTERVAL_S),
            "FACE_DB_TIMEOUT_S": str(DB_TIMEOUT_S),
        }
        replica = LocalServer(
            tmp_path / name, api_key=ADMIN_KEY, env={**settings, **env}, log_path=tmp_path / f"{name}.log"
        )
        replicas.append(replica)
        return replica

    yield make
    for replica in replicas:
        replica.kill()


def client_of(replica: LocalServer, timeout_s: float = 60.0) -> httpx.Client:
    return httpx.Client(base_url=replica.base_url, headers=replica.headers, timeout=timeout_s)


@dataclass(frozen=True)
class Replication:
    """A replica's ``/readyz``: ready or not, and its place in the change feed."""

    ready: bool
    checks: dict[str, bool]
    applied_seq: int
    database_seq: int
    following: bool

    @property
    def caught_up(self) -> bool:
        return self.ready and self.following and self.applied_seq == self.database_seq


def replication(replica: LocalServer) -> Replication:
    response = httpx.get(f"{replica.base_url}/readyz", timeout=30.0)
    body: dict[str, Any] = response.json()
    feed = body.get("replication")
    if feed is None:
        raise AssertionError(f"/readyz of a replica of a shared gallery reports no replication: {body}")
    return Replication(
        ready=response.status_code == 200 and body["status"] == "ready",
        checks=dict(body["checks"]),
        applied_seq=int(feed["applied_seq"]),
        database_seq=int(feed["database_seq"]),
        following=bool(feed["following"]),
    )


def wait_caught_up(replica: LocalServer, timeout_s: float = 15.0, at_least: int = 0) -> float:
    """Seconds until ``replica`` is ready with applied_seq == database_seq (>= ``at_least``)."""
    started = time.monotonic()
    last: Replication | None = None
    while time.monotonic() - started < timeout_s:
        try:
            last = replication(replica)
        except httpx.TransportError:
            last = None
        if last is not None and last.caught_up and last.applied_seq >= at_least:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{replica.base_url} did not catch up within {timeout_s} s; last /readyz: {last}")


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} not exported")


def index_and_rows(replica: LocalServer) -> tuple[int, int]:
    """(faces in this replica's search index, faces in the shared store), from ``/metrics``."""
    text = httpx.get(f"{replica.base_url}/metrics", headers=replica.headers, timeout=30.0).text
    indexed = metric(text, 'face_gallery_indexed_faces{collection="default"}')
    return int(indexed), int(metric(text, 'face_gallery_faces{collection="default"}'))
