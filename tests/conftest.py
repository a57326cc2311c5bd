"""Shared fixtures: the real photos in ../shared and the default model pack."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres_server import database_url, module_database_url, pg_url, postgres_server

# Fixtures for every test module: a real PostgreSQL, and the backend parametrization over it.
__all__ = ["database_url", "module_database_url", "pg_url", "postgres_server"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FACES = REPO_ROOT.parent / "shared" / "data" / "faces"


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    """``../shared/data/faces`` beside the repo root; tests that need it skip when it is absent."""
    if not SHARED_FACES.is_dir():
        pytest.skip(f"shared face data not found at {SHARED_FACES} (expected beside the repo root)")
    return SHARED_FACES


@pytest.fixture(scope="session")
def default_pack_dir() -> Path:
    """The default pack in the configured models directory, built once if missing (cached)."""
    from export.default_pack import build_default_pack
    from service.settings import Settings

    return build_default_pack(Settings().models_dir / "default")


@pytest.fixture(scope="session")
def fp32_pack_dir() -> Path:
    """The fp32 pack (``FACE_PACK=fp32``: the default pack's models, SFace in fp32), built once if missing."""
    from export.default_pack import FP32_PACK, build_sface_pack
    from service.settings import Settings

    return build_sface_pack(FP32_PACK, Settings().models_dir / "fp32")


@pytest.fixture(scope="session")
def dlib_pack_dir() -> Path:
    """The dlib pack (``FACE_PACK=dlib``) in the configured models directory, built once if missing."""
    from export.dlib_pack import build_dlib_pack
    from service.settings import Settings

    return build_dlib_pack(Settings().models_dir / "dlib")


@pytest.fixture(autouse=True)
def _torch_grad_mode_is_not_leaked() -> Iterator[None]:
    """Code under test must not switch torch's global grad mode off (tests after it would break)."""
    yield
    torch = sys.modules.get("torch")
    if torch is not None and not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("the test left torch's grad mode disabled; use torch.no_grad() as a context manager")
