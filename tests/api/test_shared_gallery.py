"""The API on a shared PostgreSQL gallery: what it reports, and how it answers while the database is down."""

from __future__ import annotations

import time
from pathlib import Path

from tests.api.conftest import Person, running_app
from tests.api.routes.gallery import H, enroll, identify
from tests.postgres_server import PostgresServer


def test_info_and_readiness_report_the_backend_and_the_replicas_place_in_the_feed(
    tmp_path: Path, default_pack_dir: Path, johns: list[Person], pg_url: str
) -> None:
    with running_app(tmp_path, default_pack_dir, database_url=pg_url) as client:
        person = johns[0]
        subject = client.post("/v1/subjects", json={"name": person.name}, headers=H).json()
        assert enroll(client, subject["id"], person.enroll[:2])["accepted"] == 2

        gallery = client.get("/v1/info", headers=H).json()["gallery"]
        assert gallery["backend"] == "postgresql"
        assert gallery["faces"] == 2
        assert gallery["replication"]["lag_changes"] == 0
        assert gallery["replication"]["applied_seq"] == gallery["replication"]["database_seq"] >= 2

        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["replica"] is True
        assert ready.json()["replication"]["following"] is True

        found = identify(client, person.probes[0])
        assert found["faces"][0]["candidates"][0]["subject_id"] == subject["id"]


def test_a_database_outage_is_a_clear_503_and_the_service_recovers_without_a_restart(
    tmp_path: Path,
    default_pack_dir: Path,
    johns: list[Person],
    pg_url: str,
    postgres_server: PostgresServer,
) -> None:
    with running_app(tmp_path, default_pack_dir, database_url=pg_url, db_timeout_s=1.0) as client:
        person = johns[1]
        subject = client.post("/v1/subjects", json={"name": person.name}, headers=H).json()
        assert enroll(client, subject["id"], person.enroll[:1])["accepted"] == 1
        postgres_server.stop()
        try:
            started = time.monotonic()
            down = client.post("/v1/subjects", json={"name": "while down"}, headers=H)
            assert time.monotonic() - started < 10  # a bounded wait, not a hang
            assert down.status_code == 503, down.text
            assert down.json()["type"].endswith("gallery_unavailable")
            assert down.headers["Retry-After"]
            assert "nothing was changed" in down.json()["detail"]
            assert client.get("/readyz").status_code == 503
        finally:
            postgres_server.start()
        # Back without restarting the service: the pool replaced its broken connections.
        deadline = time.monotonic() + 15
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.2)
        listing = client.get("/v1/subjects", headers=H)
        assert listing.status_code == 200, listing.text
        names = [s["name"] for s in listing.json()["subjects"]]
        assert names == [person.name]  # the refused write left nothing behind
        assert enroll(client, subject["id"], person.enroll[1:2])["accepted"] == 1
        found = identify(client, person.probes[0])
        assert found["faces"][0]["candidates"][0]["subject_id"] == subject["id"]
