"""The ensemble pack: members embed their own chips; one weighted, normalized vector serves 1:1 and 1:N."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.ensemble_pack import SFACE_SHARE, build_ensemble_pack, calibration
from service.evaluation.image_files import read_image
from service.packs.loader import load_pack
from service.pipeline.face_pipeline import FacePipeline
from service.settings import FacePolicy, Settings

PEOPLE = ["Jennifer", "Elon", "Mark", "Sundar"]


@pytest.fixture(scope="module")
def pipelines(default_pack_dir: Path, dlib_pack_dir: Path) -> dict[str, FacePipeline]:
    ensemble_dir = build_ensemble_pack(default_pack_dir.parent / "ensemble")
    settings = Settings(device="cpu", intra_op_threads=2)
    return {
        name: FacePipeline.from_pack(load_pack(folder), settings)
        for name, folder in {
            "ensemble": ensemble_dir,
            "sface": default_pack_dir,
            "dlib": dlib_pack_dir,
        }.items()
    }


@pytest.fixture(scope="module")
def photos(shared_faces: Path) -> list[tuple[str, np.ndarray]]:
    root = shared_faces / "deepface_testset"
    return [
        (person, read_image(path)) for person in PEOPLE for path in sorted((root / person).glob("*.jpg"))[:3]
    ]


def _embed(pipeline: FacePipeline, photos: list[tuple[str, np.ndarray]]) -> np.ndarray:
    embedded = [pipeline.analyze_chosen_sync(image, FacePolicy.CENTRE)[0] for _, image in photos]
    assert all(face is not None for face in embedded)
    return np.stack([face.embedding for face in embedded if face is not None])


def test_manifest_declares_both_members_and_their_weights(pipelines: dict[str, FacePipeline]) -> None:
    manifest = pipelines["ensemble"].manifest
    assert manifest.ensemble is not None
    sizes = [member.embedder.input_size for member in manifest.ensemble.members]
    assert sizes == [(112, 112), (150, 150)]  # each member keeps its own chip geometry
    weights = [member.weight for member in manifest.ensemble.members]
    assert weights == pytest.approx([SFACE_SHARE**0.5, (1 - SFACE_SHARE) ** 0.5])
    assert "celeba_wild" in manifest.ensemble.procedure
    assert manifest.embedding_size == 256
    assert manifest.calibration == calibration()
    assert pipelines["ensemble"].embedding_size == 256


def test_ensemble_cosine_is_the_weighted_mean_of_the_members(
    pipelines: dict[str, FacePipeline], photos: list[tuple[str, np.ndarray]]
) -> None:
    ensemble = _embed(pipelines["ensemble"], photos)
    assert np.allclose(np.linalg.norm(ensemble, axis=1), 1.0, atol=1e-5)
    sface, dlib = _embed(pipelines["sface"], photos), _embed(pipelines["dlib"], photos)
    expected = SFACE_SHARE * (sface @ sface.T) + (1 - SFACE_SHARE) * (dlib @ dlib.T)
    # Members cut their chips from the ensemble's crop (a second resampling): close, not bit-equal.
    assert np.abs(ensemble @ ensemble.T - expected).max() < 0.02


def test_ensemble_verifies_real_people_at_its_default_threshold(
    pipelines: dict[str, FacePipeline], photos: list[tuple[str, np.ndarray]]
) -> None:
    embeddings = _embed(pipelines["ensemble"], photos)
    threshold = pipelines["ensemble"].manifest.calibration.operating_points["default"].threshold
    names = np.asarray([name for name, _ in photos])
    same = names[:, None] == names[None, :]
    scores = embeddings @ embeddings.T
    off_diagonal = ~np.eye(len(names), dtype=bool)
    assert (same & off_diagonal).sum() == 20
    assert (scores[same & off_diagonal] >= threshold).all()  # measured: every genuine pair
    assert (scores[~same] < threshold).all()
