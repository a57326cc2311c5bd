"""Fixtures for the robustness tests: the real server as a child process, real face photos.

``FACE_HEAVY=1`` (``make test-heavy``) scales every loop up: 20 kills instead of 3, 5,000 fuzz
cases instead of 1,000, a 10-minute load run instead of ~20 s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks.load_test import FaceImages
from benchmarks.local_server import LocalServer


def heavy_run() -> bool:
    return os.environ.get("FACE_HEAVY", "") == "1"


@pytest.fixture(scope="session")
def face_images(shared_faces: Path) -> FaceImages:
    """dlib_johns: five people, eleven 150×150 JPEG chips each."""
    return FaceImages.from_dir(shared_faces / "dlib_johns")


ServerFactory = Callable[..., LocalServer]


@pytest.fixture
def make_server(tmp_path: Path, default_pack_dir: Path) -> Iterator[ServerFactory]:
    """Build (not start) ``face-service serve`` children on temporary data dirs; all stopped at the end."""
    servers: list[LocalServer] = []

    def make(name: str = "data", **env: str) -> LocalServer:
        settings = {"FACE_MODELS_DIR": str(default_pack_dir.parent), "FACE_PACK": default_pack_dir.name}
        server = LocalServer(tmp_path / name, env={**settings, **env}, log_path=tmp_path / f"{name}.log")
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()
