"""GET /v1/subjects filters (name prefix, metadata key/value) and duplicate names (flag / refuse), on both
gallery backends, through HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import Person, admin_headers, running_app
from tests.api.routes.gallery import enroll
from tests.postgres_server import PostgresServer

H = admin_headers()


@dataclass(frozen=True)
class Apps:
    flag: TestClient  # FACE_DUPLICATE_NAMES=flag (the default)
    refuse: TestClient  # FACE_DUPLICATE_NAMES=refuse, on a gallery of its own


@pytest.fixture(scope="module")
def apps(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    default_pack_dir: Path,
    module_database_url: str | None,
) -> Iterator[Apps]:
    refuse_url: str | None = None
    server: PostgresServer | None = None
    if module_database_url is not None:
        server = request.getfixturevalue("postgres_server")
        refuse_db = server.create_database()
        refuse_url = server.url_for(refuse_db)
    try:
        with (
            running_app(
                tmp_path_factory.mktemp("search-flag"), default_pack_dir, database_url=module_database_url
            ) as flag,
            running_app(
                tmp_path_factory.mktemp("search-refuse"),
                default_pack_dir,
                database_url=refuse_url,
                duplicate_names="refuse",
            ) as refuse,
        ):
            yield Apps(flag, refuse)
    finally:
        if server is not None:
            server.drop_database(refuse_db)


def _create(client: TestClient, name: str, metadata: dict[str, object] | None = None) -> dict:
    response = client.post("/v1/subjects", json={"name": name, "metadata": metadata or {}}, headers=H)
    assert response.status_code == 201, response.text
    return response.json()


def _list(client: TestClient, **params: object) -> dict:
    response = client.get("/v1/subjects", params=params, headers=H)
    assert response.status_code == 200, response.text
    return response.json()


def _listed_names(client: TestClient, **params: object) -> list[str]:
    return [subject["name"] for subject in _list(client, limit=500, **params)["subjects"]]


def test_subjects_are_found_by_name_prefix_and_metadata(apps: Apps, johns: list[Person]) -> None:
    client = apps.flag
    alice = _create(client, "Alice Martin", {"team": "red", "level": 3})
    enroll(client, alice["id"], johns[0].enroll[:1])  # a real face: listings report it
    _create(client, "alan turing", {"team": "blue"})
    _create(client, "ALBERT", {"team": "red", "level": "3"})
    _create(client, "Bob", {"team": "red"})
    _create(client, "50% Dave")
    _create(client, "50 Eve")

    assert _listed_names(client, name_prefix="al") == ["Alice Martin", "alan turing", "ALBERT"]
    red_als = _list(client, name_prefix="AL", metadata_key="team", metadata_value="red")["subjects"]
    assert [(s["name"], s["face_count"]) for s in red_als] == [("Alice Martin", 1), ("ALBERT", 0)]
    assert _listed_names(client, metadata_key="level") == ["Alice Martin", "ALBERT"]
    assert _listed_names(client, metadata_key="level", metadata_value="3") == ["Alice Martin", "ALBERT"]
    assert _listed_names(client, metadata_key="level", metadata_value="3.0") == ["Alice Martin"]  # a number
    assert _listed_names(client, metadata_key="team", metadata_value="RED") == []
    assert _listed_names(client, name_prefix="50%") == ["50% Dave"]
    assert _listed_names(client, name_prefix="50_") == []

    seen, cursor, pages = [], None, 0
    while True:
        page = _list(client, name_prefix="al", limit=1, **({"cursor": cursor} if cursor else {}))
        seen += [subject["name"] for subject in page["subjects"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["Alice Martin", "alan turing", "ALBERT"]
    assert pages == 3


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"metadata_value": "red"}, "query.metadata_value"),
        ({"name_prefix": ""}, "query.name_prefix"),
        ({"name_prefix": "x" * 257}, "query.name_prefix"),
        ({"name_prefix": "Al\x00"}, "query.name_prefix"),
        ({"name_prefix": "Al\nice"}, "query.name_prefix"),
        ({"metadata_key": "k" * 257}, "query.metadata_key"),
        ({"metadata_key": "te\x00am"}, "query.metadata_key"),
        ({"metadata_key": "team", "metadata_value": "v" * 1025}, "query.metadata_value"),
        ({"metadata_key": "team", "metadata_value": "r\x00"}, "query.metadata_value"),
    ],
)
def test_bad_filters_are_refused_naming_the_parameter(apps: Apps, params: dict[str, str], field: str) -> None:
    response = apps.flag.get("/v1/subjects", params=params, headers=H)
    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["errors"]] == [field]


def test_duplicate_names_are_allowed_and_flagged(apps: Apps) -> None:
    client = apps.flag
    carol = _create(client, "Carol King")
    assert carol["duplicate_name"] is False
    twin = _create(client, "  carol KING ")
    assert twin["duplicate_name"] is True
    assert client.get(f"/v1/subjects/{carol['id']}", headers=H).json()["duplicate_name"] is True
    listed = _list(client, name_prefix="carol")["subjects"]
    assert [(s["id"], s["duplicate_name"]) for s in listed] == [(carol["id"], True), (twin["id"], True)]
    renamed = client.patch(f"/v1/subjects/{twin['id']}", json={"name": "Carol Kane"}, headers=H)
    assert renamed.status_code == 200
    assert renamed.json()["duplicate_name"] is False
    assert client.get(f"/v1/subjects/{carol['id']}", headers=H).json()["duplicate_name"] is False


def test_duplicate_names_are_refused_with_refuse(apps: Apps) -> None:
    client = apps.refuse
    dan = _create(client, "Dan Brown", {"k": 1})
    refused = client.post("/v1/subjects", json={"name": "DAN brown "}, headers=H)
    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert (problem["type"], problem["status"]) == ("urn:face-service:problem:duplicate_name", 409)
    assert [(e["field"], e["code"]) for e in problem["errors"]] == [("body.name", "duplicate_name")]
    assert dan["id"] in problem["errors"][0]["reason"]
    assert _listed_names(client, name_prefix="dan") == ["Dan Brown"]  # nothing created

    eve = _create(client, "Eve", {"k": 2})
    rename = client.patch(f"/v1/subjects/{eve['id']}", json={"name": "dan brown", "metadata": {}}, headers=H)
    assert rename.status_code == 409, rename.text
    assert [e["field"] for e in rename.json()["errors"]] == ["body.name"]
    assert client.get(f"/v1/subjects/{eve['id']}", headers=H).json() == eve  # neither renamed nor emptied
    # Its own name in another case is no duplicate.
    own = client.patch(f"/v1/subjects/{dan['id']}", json={"name": "DAN BROWN"}, headers=H)
    assert own.status_code == 200, own.text
    assert own.json()["duplicate_name"] is False
