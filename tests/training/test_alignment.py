"""``--align``: raw photos → aligned chips with the service's detector, checked by re-detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.training.alignment import align_dataset, pack_detector, scaled_template

PEOPLE = ("Angelina", "Elon")
CHIP = (112, 112)
PAD = 56  # the chip is re-detected on a black canvas, where faces look like ordinary photos


@pytest.fixture
def raw_photos(shared_faces: Path, tmp_path: Path) -> Path:
    source = shared_faces / "deepface_testset"
    if not source.is_dir():
        pytest.skip(f"deepface test photos not found at {source}")
    root = tmp_path / "raw"
    for person in PEOPLE:
        (root / person).mkdir(parents=True)
        for photo in sorted((source / person).glob("*.jpg"))[:2]:
            (root / person / photo.name).symlink_to(photo)
    return root


def test_scaled_template():
    np.testing.assert_allclose(scaled_template("arcface", (112, 112))[0], (38.2946, 51.6963), rtol=1e-6)
    half = scaled_template("arcface", (56, 56))
    np.testing.assert_allclose(half * 2, scaled_template("arcface", (112, 112)))
    with pytest.raises(KeyError, match="unknown template"):
        scaled_template("nope", (64, 64))


def test_chips_put_landmarks_on_the_template(raw_photos: Path, default_pack_dir: Path, tmp_path: Path):
    template = scaled_template("arcface", CHIP)
    destination = tmp_path / "aligned"
    detector = pack_detector(default_pack_dir)
    summary = align_dataset(
        raw_photos, destination, detector=detector, template=template, size=CHIP, progress=False
    )
    assert summary.aligned == 4
    assert summary.no_face == ()
    chips = sorted(destination.rglob("*.png"))
    assert {chip.parent.name for chip in chips} == set(PEOPLE)

    for path in chips:
        chip = np.asarray(Image.open(path).convert("RGB"))
        assert chip.shape == (CHIP[1], CHIP[0], 3)
        canvas = np.zeros((CHIP[1] + 2 * PAD, CHIP[0] + 2 * PAD, 3), dtype=np.uint8)
        canvas[PAD:-PAD, PAD:-PAD] = chip
        faces = detector.detect(canvas)
        assert faces, f"no face found again in {path}"
        error = np.linalg.norm(faces[0].landmarks - PAD - template, axis=1)
        assert error.mean() < 8.0, f"{path}: landmarks {error.round(1)} px from the template"

    again = align_dataset(
        raw_photos, destination, detector=detector, template=template, size=CHIP, progress=False
    )
    assert (again.aligned, again.cached) == (0, 4)
