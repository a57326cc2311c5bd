"""Helpers for the route tests: uploads as a client sends them, enrollment, identification."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from tests.api.conftest import admin_headers, png_bytes

H = admin_headers()


@dataclass(frozen=True)
class Enrolled:
    """A running app with the five dlib_johns people enrolled (the ``enrolled`` fixture)."""

    client: TestClient
    subject_ids: dict[str, str]  # person name -> subject id
    threshold: float  # the pack's default operating point


def upload_file(path: Path, field: str = "image") -> tuple[str, tuple[str, bytes, str]]:
    if path.suffix == ".pgm":  # the API takes JPEG/PNG/WebP/BMP: send ORL's PGMs as PNG, as a client would
        return field, (path.stem + ".png", png_bytes(Image.open(path)), "image/png")
    return field, (path.name, path.read_bytes(), "application/octet-stream")


def enroll(client: TestClient, subject_id: str, images: list[Path]) -> dict:
    response = client.post(
        f"/v1/subjects/{subject_id}/faces", files=[upload_file(path, "images") for path in images], headers=H
    )
    assert response.status_code == 201, response.text
    return response.json()


def identify(client: TestClient, path: Path, **form: str) -> dict:
    response = client.post("/v1/identify", files=[upload_file(path)], data=form, headers=H)
    assert response.status_code == 200, response.text
    return response.json()
