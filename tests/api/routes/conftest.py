"""The ``enrolled`` fixture: a real app on the default pack, the dlib_johns people enrolled (per module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import Person, running_app
from tests.api.routes.gallery import Enrolled, H, enroll


@pytest.fixture(scope="module")
def enrolled(
    tmp_path_factory: pytest.TempPathFactory,
    default_pack_dir: Path,
    johns: list[Person],
    module_database_url: str | None,
) -> Iterator[Enrolled]:
    """Every route test runs on both gallery backends: SQLite in the data dir, and PostgreSQL."""
    data_dir = tmp_path_factory.mktemp("routes-gallery")
    with running_app(data_dir, default_pack_dir, database_url=module_database_url) as client:
        subject_ids = {}
        for person in johns:
            created = client.post(
                "/v1/subjects", json={"name": person.name, "metadata": {"set": "dlib_johns"}}, headers=H
            )
            assert created.status_code == 201, created.text
            subject_ids[person.name] = created.json()["id"]
            result = enroll(client, subject_ids[person.name], person.enroll)
            assert result["accepted"] == len(person.enroll), result
        info = client.get("/v1/info", headers=H).json()
        yield Enrolled(client, subject_ids, info["threshold"]["value"])
