"""Concurrent enrollments and identifications from several threads against one app."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi.testclient import TestClient

from tests.api.conftest import Person, admin_headers, api_settings, running_app

H = admin_headers()


def _files(paths: list[Path], field: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (path.name, path.read_bytes(), "image/jpeg")) for path in paths]


def _top_subject(client: TestClient, probe: Path) -> str | None:
    response = client.post(
        "/v1/identify", files=_files([probe], "image"), data={"largest_only": "true"}, headers=H
    )
    assert response.status_code == 200, response.text
    candidates = response.json()["faces"][0]["candidates"]
    return candidates[0]["subject_id"] if candidates else None


def test_concurrent_enrollments_and_identifications(
    tmp_path: Path, default_pack_dir: Path, johns: list[Person]
) -> None:
    settled, arriving = johns[:3], johns[3:]
    with running_app(tmp_path, default_pack_dir, batch_max_wait_ms=5.0) as client:
        ids: dict[str, str] = {}
        for person in settled:
            ids[person.name] = client.post("/v1/subjects", json={"name": person.name}, headers=H).json()["id"]
            enrolled = client.post(
                f"/v1/subjects/{ids[person.name]}/faces", files=_files(person.enroll, "images"), headers=H
            )
            assert enrolled.status_code == 201, enrolled.text

        def enroll_one_by_one(person: Person) -> tuple[str, list[int]]:
            subject = client.post("/v1/subjects", json={"name": person.name}, headers=H).json()["id"]
            statuses = [
                client.post(
                    f"/v1/subjects/{subject}/faces", files=_files([path], "images"), headers=H
                ).status_code
                for path in person.enroll
            ]
            return subject, statuses

        def identify_all(person: Person) -> list[str | None]:
            return [_top_subject(client, probe) for probe in person.probes]

        with ThreadPoolExecutor(max_workers=5) as pool:
            enrollments = [pool.submit(enroll_one_by_one, person) for person in arriving]
            identifications = [pool.submit(identify_all, person) for person in settled]
            for person, future in zip(arriving, enrollments, strict=True):
                subject, statuses = future.result()
                assert statuses == [201] * len(person.enroll)
                ids[person.name] = subject
            for person, identified in zip(settled, identifications, strict=True):
                # The newcomers never outrank an enrolled person on their own photos, mid-enrollment or not.
                assert identified.result() == [ids[person.name]] * len(person.probes)

        info = client.get("/v1/info", headers=H).json()
        faces = sum(len(person.enroll) for person in johns)
        assert faces < api_settings(tmp_path, default_pack_dir).index_hnsw_min_size
        assert info["gallery"] == {
            "subjects": len(johns),
            "faces": faces,
            "index_type": "flat",  # exact search below FACE_INDEX_HNSW_MIN_SIZE faces
            "backend": "sqlite",
            "replication": None,  # a gallery no other process writes
        }
        for person in johns:
            assert client.get(f"/v1/subjects/{ids[person.name]}", headers=H).json()["face_count"] == len(
                person.enroll
            )
            assert _top_subject(client, person.probes[0]) == ids[person.name]
