"""Fixtures for the API tests: settings on a temporary data dir, the real default pack, images."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from service.api.app import create_app
from service.settings import Settings

ADMIN_KEY = "test-admin-key-0123456789abcdef"
JOHNS = ("John_Salley", "John_Savage", "John_Schneider", "John_Shimkus", "John_Simm")
ENROLL_PER_PERSON = 5


@dataclass(frozen=True)
class Person:
    name: str
    enroll: list[Path]
    probes: list[Path]


def api_settings(data_dir: Path, pack_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "models_dir": pack_dir.parent,
        "pack": pack_dir.name,
        "api_key": SecretStr(ADMIN_KEY),
        "auth_enabled": True,
        "intra_op_threads": 1,  # the test machine's cores are shared
        "device": "cpu",
        "cors_origins": [],
    }
    values.update(overrides)
    return Settings.model_validate(values)


def admin_headers() -> dict[str, str]:
    return {"X-API-Key": ADMIN_KEY}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def johns(shared_faces: Path) -> list[Person]:
    """The five dlib_johns people: 5 images to enroll, the other 6 to probe (sorted by file name)."""
    people = []
    for name in JOHNS:
        files = sorted((shared_faces / "dlib_johns" / name).glob("*.jpg"))
        assert len(files) == 11, f"expected 11 images of {name}, found {len(files)}"
        people.append(Person(name, files[:ENROLL_PER_PERSON], files[ENROLL_PER_PERSON:]))
    return people


@pytest.fixture(scope="session")
def strangers(shared_faces: Path) -> list[Path]:
    """People never enrolled: an ORL subject (PGM, grey) and two deepface people."""
    return [
        shared_faces / "orl_att_faces" / "s1" / "1.pgm",
        shared_faces / "deepface_testset" / "Elon" / "img18.jpg",
        shared_faces / "deepface_testset" / "Jeff" / "img20.jpg",
    ]


@contextmanager
def running_app(data_dir: Path, pack_dir: Path, **overrides: object) -> Iterator[TestClient]:
    """The real app with its lifespan (models loaded, gallery opened), shut down on exit."""
    with TestClient(create_app(api_settings(data_dir, pack_dir, **overrides))) as client:
        yield client
