"""/v1/gallery/export and /v1/gallery/import: a gallery moved between services and backends, verified."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.packs.files import write_manifest
from service.packs.loader import load_pack
from tests.api.conftest import Person, running_app
from tests.api.routes.gallery import Enrolled, H, identify


def _export(client: TestClient) -> bytes:
    response = client.get("/v1/gallery/export", headers=H)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-tar"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert ".tar" in disposition
    return response.content


def _import(client: TestClient, archive: bytes, **form: str) -> tuple[int, dict]:
    files = [("file", ("gallery.tar", archive, "application/x-tar"))]
    response = client.post("/v1/gallery/import", files=files, data=form, headers=H)
    return response.status_code, response.json()


def _code(problem: dict) -> str:
    return str(problem["type"]).removeprefix("urn:face-service:problem:")


def _top(client: TestClient, probe: Path) -> tuple[str, float]:
    (face,) = identify(client, probe, largest_only="true")["faces"]
    best = face["candidates"][0]
    return best["subject_id"], best["similarity"]


def _subject_count(client: TestClient) -> int:
    return len(client.get("/v1/subjects", params={"limit": 500}, headers=H).json()["subjects"])


def test_a_gallery_moves_to_a_service_on_the_other_backend(
    enrolled: Enrolled,
    module_database_url: str | None,
    johns: list[Person],
    tmp_path: Path,
    default_pack_dir: Path,
    request: pytest.FixtureRequest,
) -> None:
    """SQLite -> PostgreSQL, and PostgreSQL -> SQLite: same subjects, same answers to the same photos."""
    archive = _export(enrolled.client)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert {"manifest.json", "subjects.jsonl", "faces.jsonl", "embeddings.npy"} <= set(tar.getnames())
    other = str(request.getfixturevalue("pg_url")) if module_database_url is None else None
    with running_app(tmp_path, default_pack_dir, database_url=other) as target:
        status, answer = _import(target, archive)
        assert status == 200, answer
        faces = sum(len(person.enroll) for person in johns)
        assert (answer["subjects"], answer["faces"], answer["reembedded"]) == (len(johns), faces, 0)
        assert answer["source_pack_id"] == answer["pack_id"]
        for person in johns:
            probe = person.probes[0]
            subject_id, similarity = _top(target, probe)
            assert subject_id == enrolled.subject_ids[person.name]
            assert similarity == pytest.approx(_top(enrolled.client, probe)[1], abs=1e-6)
        imported = target.get(f"/v1/subjects/{enrolled.subject_ids[johns[0].name]}", headers=H).json()
        original = enrolled.client.get(
            f"/v1/subjects/{enrolled.subject_ids[johns[0].name]}", headers=H
        ).json()
        assert imported == original  # name, metadata, face count and both timestamps

        # The same archive again: its ids are taken now.
        status, refused = _import(target, archive)
        assert status == 409, refused
        assert _code(refused) == "import_conflict"
        assert refused["errors"][0]["field"] == "on_conflict"
        status, skipped = _import(target, archive, on_conflict="skip")
        assert status == 200
        assert (skipped["subjects"], skipped["skipped_subjects"]) == (0, len(johns))
        assert _subject_count(target) == len(johns)


def test_a_damaged_archive_is_refused_naming_the_field(
    enrolled: Enrolled, module_database_url: str | None
) -> None:
    archive = bytearray(_export(enrolled.client))
    with tarfile.open(fileobj=io.BytesIO(bytes(archive))) as tar:
        faces = tar.getmember("faces.jsonl")
    before = _subject_count(enrolled.client)
    archive[faces.offset_data + 10] ^= 0x20
    status, refused = _import(enrolled.client, bytes(archive), on_conflict="new-ids")
    assert status == 422, refused
    assert _code(refused) == "invalid_archive"
    assert "faces.jsonl does not match its SHA-256" in refused["detail"]
    assert refused["errors"][0]["field"] == "file"
    status, refused = _import(enrolled.client, bytes(archive[: len(archive) // 3]))
    assert (status, _code(refused)) == (422, "invalid_archive")
    assert _subject_count(enrolled.client) == before


def test_the_import_has_its_own_body_limit_and_needs_admin(tmp_path: Path, default_pack_dir: Path) -> None:
    with running_app(tmp_path, default_pack_dir, max_import_bytes=65536, max_request_bytes=2048) as client:
        status, answer = _import(client, b"\0" * 70000)
        assert (status, _code(answer)) == (413, "content_too_large")
        assert "65536" in answer["detail"]
        enroller = client.post("/v1/keys", json={"name": "e", "scopes": ["enroll"]}, headers=H).json()["key"]
        for method, path in (("GET", "/v1/gallery/export"), ("POST", "/v1/gallery/import")):
            response = client.request(method, path, headers={"X-API-Key": enroller})
            assert response.status_code == 403, (path, response.text)
        # An empty gallery exports (and re-imports) as an empty archive: 10 KiB, over FACE_MAX_REQUEST_BYTES.
        status, answer = _import(client, _export(client))
        assert (status, answer["subjects"], answer["faces"]) == (200, 0, 0)


def _other_pack(default_pack_dir: Path, folder: Path) -> Path:
    """The default pack's networks under another id, flip augmentation on: embeddings of its own."""
    base = load_pack(default_pack_dir)
    folder.mkdir(parents=True)
    for name in base.manifest.files:
        shutil.copy(default_pack_dir / name, folder / name)
    embedder = base.manifest.embedder.model_copy(update={"flip_augmentation": True})
    write_manifest(folder, base.manifest.model_copy(update={"id": "archive-api-other", "embedder": embedder}))
    return folder


def test_a_service_on_another_pack_reembeds_the_archive(
    enrolled: Enrolled, johns: list[Person], tmp_path: Path, default_pack_dir: Path
) -> None:
    archive = _export(enrolled.client)
    other = _other_pack(default_pack_dir, tmp_path / "models" / "other")
    with running_app(tmp_path / "data", other) as target:
        status, answer = _import(target, archive)
        assert status == 200, answer
        faces = sum(len(person.enroll) for person in johns)
        assert (answer["pack_id"], answer["faces"], answer["reembedded"]) == (
            "archive-api-other",
            faces,
            faces,
        )
        assert answer["source_pack_id"] != answer["pack_id"]
        for person in johns:
            assert _top(target, person.probes[0])[0] == enrolled.subject_ids[person.name]
