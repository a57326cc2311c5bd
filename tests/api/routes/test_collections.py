"""Collections: named galleries in one service, each pinned to its own pack (FACE_COLLECTIONS).

A service with the default collection (the default pack) and ``kiosk`` on another pack folder (the
default's networks under another id, flip augmentation on: its embeddings differ, as another pack's
would). On both gallery backends: each collection finds only its own people, answers with its own
pack, keeps its gallery over a restart, and lives in its own data dir or PostgreSQL schema.
"""

from __future__ import annotations

import os
import shutil
from contextlib import AbstractContextManager
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.conninfo import conninfo_to_dict
from pydantic import ValidationError

from service.cli import main as cli_main
from service.gallery.store import GalleryError
from service.packs.files import PackError, write_manifest
from service.packs.loader import load_pack
from service.postgres.schemas import url_in_schema
from service.settings import Settings
from service.usecases.resources import build_resources
from tests.api.conftest import Person, api_settings, running_app
from tests.api.routes.gallery import H, upload_file

KIOSK = "/v1/collections/kiosk"
OTHER_PACK_ID = "collections-other-pack"
ENROLLED = 3  # images per person: enough to be found, cheap to embed


@pytest.fixture(scope="module")
def models_dir(default_pack_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``default`` (the default pack) and ``other`` (its networks under another id) side by side."""
    models = tmp_path_factory.mktemp("collection-models")
    (models / "default").symlink_to(default_pack_dir.resolve(), target_is_directory=True)
    other = models / "other"
    other.mkdir()
    base = load_pack(default_pack_dir)
    for name in base.manifest.files:  # a pack's files may not be symlinks out of its folder
        try:
            os.link(default_pack_dir / name, other / name)
        except OSError:  # another file system
            shutil.copy(default_pack_dir / name, other / name)
    embedder = base.manifest.embedder.model_copy(update={"flip_augmentation": True})
    write_manifest(other, base.manifest.model_copy(update={"id": OTHER_PACK_ID, "embedder": embedder}))
    return models


def _app(data_dir: Path, models: Path, database_url: str | None) -> AbstractContextManager[TestClient]:
    return running_app(
        data_dir, models / "default", collections={"kiosk": "other"}, database_url=database_url
    )


def _subject(client: TestClient, prefix: str, person: Person) -> tuple[str, list[str]]:
    created = client.post(f"{prefix}/subjects", json={"name": person.name}, headers=H)
    assert created.status_code == 201, created.text
    subject_id = created.json()["id"]
    files = [upload_file(path, "images") for path in person.enroll[:ENROLLED]]
    enrolled = client.post(f"{prefix}/subjects/{subject_id}/faces", files=files, headers=H)
    assert enrolled.status_code == 201, enrolled.text
    results = enrolled.json()["results"]
    assert [r["accepted"] for r in results] == [True] * ENROLLED, results
    return subject_id, [r["face_id"] for r in results]


def _found(client: TestClient, prefix: str, probe: Path) -> set[str]:
    """The subjects ``prefix``'s identify names for the probe's face."""
    response = client.post(
        f"{prefix}/identify", files=[upload_file(probe)], data={"largest_only": "true"}, headers=H
    )
    assert response.status_code == 200, response.text
    (face,) = response.json()["faces"]
    return {candidate["subject_id"] for candidate in face["candidates"]}


def _collections(client: TestClient) -> dict[str, dict[str, object]]:
    response = client.get("/v1/collections", headers=H)
    assert response.status_code == 200, response.text
    return {item["name"]: item for item in response.json()["collections"]}


def test_each_collection_has_its_own_pack_subjects_and_index(
    tmp_path: Path,
    models_dir: Path,
    johns: list[Person],
    database_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kiosk_person, default_person = johns[0], johns[1]
    with _app(tmp_path, models_dir, database_url) as client:
        kiosk_id, kiosk_faces = _subject(client, KIOSK, kiosk_person)
        default_id, _ = _subject(client, "/v1", default_person)

        # Each collection finds its own person, and never the other collection's.
        assert _found(client, KIOSK, kiosk_person.probes[0]) == {kiosk_id}
        assert _found(client, "/v1", default_person.probes[0]) == {default_id}
        assert _found(client, KIOSK, default_person.probes[0]) == set()
        assert _found(client, "/v1", kiosk_person.probes[0]) == set()
        # /v1/collections/default/... is the /v1/... gallery.
        assert _found(client, "/v1/collections/default", default_person.probes[0]) == {default_id}
        listed = client.get("/v1/collections/default/subjects", headers=H).json()["subjects"]
        assert [s["id"] for s in listed] == [default_id]

        # Each answers with its own pack.
        photo = [upload_file(kiosk_person.probes[1])]
        kiosk_embed = client.post(f"{KIOSK}/embed", files=photo, headers=H).json()
        default_embed = client.post("/v1/embed", files=photo, headers=H).json()
        assert kiosk_embed["pack_id"] == OTHER_PACK_ID != default_embed["pack_id"]
        # Faces and subjects are found by id only in their own collection.
        assert client.get(f"{KIOSK}/faces/{kiosk_faces[0]}", headers=H).json()["pack_id"] == OTHER_PACK_ID
        assert client.get(f"/v1/faces/{kiosk_faces[0]}", headers=H).status_code == 404
        assert client.get(f"/v1/subjects/{kiosk_id}", headers=H).status_code == 404

        listing = _collections(client)
        assert list(listing) == ["default", "kiosk"]
        assert listing["kiosk"]["pack_id"] == OTHER_PACK_ID
        assert listing["default"]["pack_id"] == default_embed["pack_id"]
        assert (listing["kiosk"]["subjects"], listing["kiosk"]["faces"]) == (1, ENROLLED)
        assert (listing["default"]["subjects"], listing["default"]["faces"]) == (1, ENROLLED)
        info = client.get("/v1/info", headers=H).json()
        assert info["collections"] == [
            {"name": "default", "pack_id": default_embed["pack_id"]},
            {"name": "kiosk", "pack_id": OTHER_PACK_ID},
        ]
        ready = client.get("/readyz").json()
        assert ready["checks"]["gallery"] is ready["checks"]["gallery:kiosk"] is True

        unknown = client.get("/v1/collections/lobby/subjects", headers=H)
        assert unknown.status_code == 404
        assert unknown.json()["errors"][0]["field"] == "path.collection"
        assert unknown.json()["type"].endswith(":collection_not_found")
        # Without a key, an unknown collection is a 401 like any other; for a key limited to other
        # collections, a 403: nothing tells them which collections exist.
        assert client.get("/v1/collections/lobby/subjects").status_code == 401
        limited = client.post("/v1/keys", json={"scopes": ["read"], "collections": ["kiosk"]}, headers=H)
        assert limited.status_code == 201, limited.text
        refused = client.get("/v1/collections/lobby/subjects", headers={"X-API-Key": limited.json()["key"]})
        assert refused.status_code == 403
        assert refused.json()["type"].endswith(":collection_not_allowed")
        # Latency metrics name the collection routes' template, not each collection; gallery sizes
        # are per collection.
        metrics = client.get("/metrics").text
        assert 'route="/v1/collections/{collection}/identify"' in metrics
        counts = _collections(client)
        for name in ("default", "kiosk"):
            assert f'face_gallery_faces{{collection="{name}"}} {float(counts[name]["faces"])}' in metrics

    # Over a restart each collection keeps its gallery and its pin.
    with _app(tmp_path, models_dir, database_url) as client:
        assert _found(client, KIOSK, kiosk_person.probes[2]) == {kiosk_id}
        assert _found(client, "/v1", default_person.probes[2]) == {default_id}
        # Another collection's archive comes in re-embedded with this collection's pack.
        archive = client.get("/v1/gallery/export", headers=H)
        assert archive.status_code == 200
        imported = client.post(
            f"{KIOSK}/gallery/import",
            files={"file": ("g.tar", archive.content, "application/x-tar")},
            headers=H,
        )
        assert imported.status_code == 200, imported.text
        assert imported.json()["reembedded"] == ENROLLED
        assert _found(client, KIOSK, default_person.probes[0]) == {default_id}
        assert _collections(client)["default"]["faces"] == ENROLLED

    _assert_stored_apart(tmp_path, database_url, default_person.name)
    # Pinned to its pack: kiosk started on another one fails, naming the collection.
    settings = api_settings(
        tmp_path, models_dir / "default", collections={"kiosk": "default"}, database_url=database_url
    )
    with pytest.raises(GalleryError, match="collection 'kiosk' \\(pack 'default'\\)") as refused:
        build_resources(settings)
    assert f"holds embeddings from pack '{OTHER_PACK_ID}'" in str(refused.value)
    assert 'FACE_COLLECTIONS naming {"kiosk": "other"}' in str(refused.value)  # one way back
    assert "reembed --collection kiosk" in str(refused.value)  # the other: it works
    for name, value in {
        "FACE_DATA_DIR": str(tmp_path),
        "FACE_MODELS_DIR": str(models_dir),
        "FACE_COLLECTIONS": '{"kiosk": "default"}',
        "FACE_DEVICE": "cpu",
        "FACE_DATABASE_URL": database_url,
    }.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert cli_main(["reembed", "--collection", "kiosk"]) == 0
    resources = build_resources(settings)
    try:
        kiosk = resources.in_collection("kiosk")
        assert kiosk.gallery.pack_id == kiosk.pipeline.pack_id != OTHER_PACK_ID
        assert kiosk.gallery.counts().faces == kiosk.gallery.index_size > 0  # every face re-embedded
    finally:
        resources.close()


def _assert_stored_apart(data_dir: Path, database_url: str | None, default_name: str) -> None:
    if database_url is None:
        kiosk = data_dir / "collections" / "kiosk"
        assert sorted(path.name for path in kiosk.iterdir()) == ["gallery.lock", "gallery.sqlite3"]  # no keys
        return
    with psycopg.connect(database_url) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'collection_kiosk'"
            )
        }
        assert {"subjects", "faces", "gallery_meta", "schema_migrations"} <= tables
        names = [row[0] for row in conn.execute("SELECT name FROM public.subjects")]
        assert names == [default_name]  # the default collection's tables hold nothing of kiosk's
        kiosk_count = conn.execute("SELECT count(*) FROM collection_kiosk.subjects").fetchone()
        assert kiosk_count == (2,)


def test_a_collection_that_cannot_start_is_named(tmp_path: Path, models_dir: Path) -> None:
    settings = api_settings(tmp_path, models_dir / "default", collections={"lobby": "no-such-pack"})
    with pytest.raises(PackError, match="collection 'lobby' \\(pack 'no-such-pack'\\)"):
        build_resources(settings)
    # Nothing stays open: the default gallery's data-dir lock was released.
    build_resources(api_settings(tmp_path, models_dir / "default")).close()


@pytest.mark.parametrize(
    ("collections", "message"),
    [
        ({"Kiosk": "fast"}, "'Kiosk' is no collection name"),
        ({"kiosk-2": "fast"}, "'kiosk-2' is no collection name"),
        ({"k" * 41: "fast"}, "is no collection name"),
        ({"default": "fast"}, "'default' is the gallery of FACE_PACK"),
        ({"kiosk": "../fast"}, "'../fast' is no pack folder name"),
    ],
)
def test_badly_declared_collections_are_refused(collections: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(collections=collections)


def test_a_schema_is_added_to_the_urls_own_options() -> None:
    url = (
        "postgresql://face:secret@db.example:5432/faces?options=-c%20statement_timeout%3D5000&sslmode=require"
    )
    parts = conninfo_to_dict(url_in_schema(url, "collection_kiosk"))
    assert parts["options"] == "-c statement_timeout=5000 -c search_path=collection_kiosk,public"
    assert (parts["host"], parts["dbname"], parts["password"], parts["sslmode"]) == (
        "db.example",
        "faces",
        "secret",
        "require",
    )


def test_collections_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACE_COLLECTIONS", '{"kiosk": "fast", "lobby": "default"}')
    assert Settings().collections == {"kiosk": "fast", "lobby": "default"}
