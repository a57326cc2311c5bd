"""Helpers and fixtures shared by the gallery tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="session")
def johns(shared_faces: Path) -> dict[str, list[np.ndarray]]:
    """dlib_johns: five people, eleven 150×150 photos each, in a fixed order."""
    people = sorted(p for p in (shared_faces / "dlib_johns").iterdir() if p.is_dir())
    return {person.name: [load_rgb(p) for p in sorted(person.glob("*.jpg"))] for person in people}


@pytest.fixture(scope="session")
def default_pipeline(default_pack_dir: Path):  # -> FacePipeline
    from service.packs.loader import load_pack
    from service.pipeline.face_pipeline import FacePipeline
    from service.settings import Settings

    return FacePipeline.from_pack(load_pack(default_pack_dir), Settings(device="cpu", intra_op_threads=2))
