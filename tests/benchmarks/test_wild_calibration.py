"""The default pack's thresholds mean what they say on in-the-wild photos (celeba_wild, full pipeline).

Runs every celeba_wild photo through the default pack once (about 3 minutes on 2 cores; cached under
the models folder afterwards, keyed by the manifest and settings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import benchmarks.wild_eval as wild
from service.packs.loader import LoadedPack, load_pack
from service.settings import FacePolicy, Settings


@pytest.fixture(scope="module")
def default_pack(default_pack_dir: Path) -> LoadedPack:
    return load_pack(default_pack_dir)


@pytest.fixture(scope="module")
def photos(default_pack: LoadedPack, default_pack_dir: Path, shared_faces: Path) -> list[wild.PhotoFaces]:
    settings = Settings(models_dir=default_pack_dir.parent, pack=default_pack_dir.name, device="cpu")
    images = wild.identity_folders(shared_faces / "celeba_wild")
    assert len(images) == 299
    return wild.embed_photos(
        default_pack, settings, images, default_pack_dir.parent.parent / "wild-eval-cache"
    )


@pytest.fixture(scope="module")
def centre_run(photos: list[wild.PhotoFaces], default_pack: LoadedPack) -> dict:
    return wild.evaluate(photos, FacePolicy.CENTRE, default_pack)


def test_named_thresholds_deliver_their_false_accept_rate(centre_run: dict, default_pack: LoadedPack) -> None:
    points = default_pack.manifest.calibration.operating_points
    assert points["default"] == points["far=1e-3"]
    measured = centre_run["verification"]["at_named_thresholds"]
    for name in ("far=1e-2", "far=1e-3", "far=1e-4"):
        target = points[name].far
        assert target is not None
        assert 0.5 * target <= measured[name]["far"] <= 2 * target, (name, measured[name])
    # Genuine pairs are accepted at the default: the lab-photo threshold rejected ~10 % of them.
    assert measured["far=1e-3"]["tar"] >= 0.88


def test_thresholds_fitted_on_half_the_people_hold_on_the_other_half(centre_run: dict) -> None:
    for far, result in centre_run["held_out_calibration"].items():
        assert 0.5 * float(far) <= result["far_on_held_out"] <= 2 * float(far), (far, result)


def test_every_photo_gets_a_face_and_the_centre_policy_beats_largest(
    photos: list[wild.PhotoFaces], centre_run: dict, default_pack: LoadedPack
) -> None:
    assert centre_run["photos_without_face"] == 0
    assert sum(len(photo.scores) > 1 for photo in photos) >= 50  # the set does have group photos
    largest = wild.evaluate(photos, FacePolicy.LARGEST, default_pack)
    assert centre_run["verification"]["tar_at_far"]["0.001"] > largest["verification"]["tar_at_far"]["0.001"]
    assert centre_run["identification"]["rank1"] > largest["identification"]["rank1"]


def test_open_set_false_positives_grow_with_the_gallery(centre_run: dict) -> None:
    # FAR 1e-3 per comparison against ~300 people: FPIR ≈ 1 − (1 − FAR)^N, far above FAR itself.
    fpir = centre_run["identification"]["at_named_thresholds"]["far=1e-3"]["fpir"]
    assert fpir > 0.05
    assert np.isfinite(fpir)
