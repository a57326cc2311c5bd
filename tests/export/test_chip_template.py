"""The dlib pack's 150×150 template reproduces dlib's chip geometry (dlib-bin as the reference)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from export.chip_template import (
    CHIP_PADDING,
    CHIP_SIZE,
    ChipSample,
    chip_displacement_px,
    default_retinaface_detector,
    derive_dlib_chip_template,
    dlib_chip_to_image,
    image_to_dlib_chip,
    insightface_sample_images,
    mirror_chip_landmarks,
    template_residual_px,
)
from service.packs.conventions import DLIB_CHIP_TEMPLATE_150, DLIB_CHIP_TEMPLATE_150_DERIVATION
from service.pipeline.align import align_to_template
from service.pipeline.decode import decode_image
from service.pipeline.detect import FaceDetector

dlib = pytest.importorskip("dlib")
face_recognition_models = pytest.importorskip("face_recognition_models")

TEMPLATE = np.asarray(DLIB_CHIP_TEMPLATE_150, dtype=np.float32)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return default_retinaface_detector()


@pytest.fixture(scope="module")
def dlib_models():
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    return dlib.get_frontal_face_detector(), predictor


def test_metrics_on_known_samples() -> None:
    exact = ChipSample(TEMPLATE.copy(), 0, False)
    shifted = ChipSample(TEMPLATE + np.array([3.0, -4.0], dtype=np.float32), 0, False)
    assert template_residual_px([exact], TEMPLATE) == pytest.approx(0.0, abs=1e-5)
    assert chip_displacement_px([exact], TEMPLATE) == pytest.approx(0.0, abs=1e-3)
    assert template_residual_px([shifted], TEMPLATE) == pytest.approx(5.0, abs=1e-4)
    assert chip_displacement_px([shifted], TEMPLATE) == pytest.approx(5.0, abs=1e-3)  # a pure translation


def test_committed_template_is_left_right_symmetric() -> None:
    np.testing.assert_allclose(mirror_chip_landmarks(TEMPLATE), TEMPLATE, atol=0.011)
    assert DLIB_CHIP_TEMPLATE_150_DERIVATION.samples > 0
    assert DLIB_CHIP_TEMPLATE_150_DERIVATION.residual_px is not None


@pytest.mark.parametrize("upscale", [1.0, 3.0])
def test_chip_mapping_is_what_dlib_samples(dlib_models, upscale: float) -> None:
    """Chips of coordinate ramps: bilinear sampling of a linear ramp returns the sampled position."""
    images, _ = insightface_sample_images()
    image = cv2.resize(images[0], None, fx=upscale, fy=upscale) if upscale != 1.0 else images[0]
    height, width = image.shape[:2]
    ys, xs = np.mgrid[:height, :width].astype(np.float32)
    face_detector, predictor = dlib_models
    rects = face_detector(image, 0)
    assert len(rects) >= 3
    rows, cols = np.mgrid[:CHIP_SIZE, :CHIP_SIZE]
    grid = np.column_stack([cols.ravel(), rows.ravel()]).astype(np.float64)
    interior = ((grid >= 8) & (grid < CHIP_SIZE - 8)).all(axis=1)  # dlib's pyramid blurs the edges
    for rect in rects:
        details = dlib.get_face_chip_details(predictor(image, rect), CHIP_SIZE, CHIP_PADDING)
        sampled = np.column_stack(
            [dlib.extract_image_chip(xs, details).ravel(), dlib.extract_image_chip(ys, details).ravel()]
        )
        mapping = dlib_chip_to_image(details)
        predicted = grid @ mapping[:, :2].T + mapping[:, 2]
        error_in_chip_px = np.abs(predicted - sampled)[interior].max() / np.linalg.norm(mapping[:, 0])
        if upscale == 1.0:  # faces about the chip's size: dlib samples the image itself, exactly here
            assert error_in_chip_px < 0.001
        else:  # large faces: dlib samples a pyramid level, whose grid is half an image pixel off
            assert error_in_chip_px < 0.25


def test_rederived_template_matches_the_committed_constant(detector: FaceDetector) -> None:
    images, data = insightface_sample_images()
    template, derivation = derive_dlib_chip_template(images, data=data, detector=detector)
    assert np.abs(template - TEMPLATE).max() < 1.0
    assert derivation.samples == DLIB_CHIP_TEMPLATE_150_DERIVATION.samples
    assert derivation.data == DLIB_CHIP_TEMPLATE_150_DERIVATION.data
    assert derivation.residual_px == pytest.approx(DLIB_CHIP_TEMPLATE_150_DERIVATION.residual_px, abs=0.5)


def test_our_chips_match_dlibs_on_photos_not_used_to_derive(
    detector: FaceDetector, dlib_models, shared_faces: Path
) -> None:
    """Our detector + template vs dlib.get_face_chip on deepface photos (one per identity, ≤ 800 px)."""
    face_detector, predictor = dlib_models
    root = shared_faces / "deepface_testset"
    paths = [sorted(folder.glob("*.jpg"))[0] for folder in sorted(root.iterdir()) if folder.is_dir()][:6]
    displacements, ours_vs_dlib, dlib_vs_shifted = [], [], []
    for path in paths:
        image = decode_image(path.read_bytes(), max_bytes=1 << 26, max_pixels=1 << 26)
        scale = 800 / max(image.shape[:2])
        if scale < 1:
            image = np.asarray(
                cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), np.uint8
            )
        faces, rects = detector.detect(image), face_detector(image, 1)
        if not faces or not rects:
            continue
        shape = predictor(image, max(rects, key=lambda rect: rect.area()))
        dlib_chip = dlib.get_face_chip(image, shape, CHIP_SIZE, CHIP_PADDING).astype(np.float64)
        ours = align_to_template(image, faces[0].landmarks, TEMPLATE, (CHIP_SIZE, CHIP_SIZE))
        to_chip = image_to_dlib_chip(dlib.get_face_chip_details(shape, CHIP_SIZE, CHIP_PADDING))
        in_dlib_chip = faces[0].landmarks.astype(np.float64) @ to_chip[:, :2].T + to_chip[:, 2]
        displacements.append(
            chip_displacement_px([ChipSample(in_dlib_chip.astype(np.float32), 0, False)], TEMPLATE)
        )
        ours_vs_dlib.append(np.abs(ours - dlib_chip).mean())
        dlib_vs_shifted.append(np.abs(np.roll(dlib_chip, 5, axis=1) - dlib_chip)[:, 5:].mean())
    assert len(displacements) >= 5
    assert np.mean(displacements) < 5.0  # chip pixels: our chips sit within a few pixels of dlib's
    # Pixel content: our chip is closer to dlib's than dlib's own chip is to itself moved by 5 px.
    assert np.mean(ours_vs_dlib) < np.mean(dlib_vs_shifted)
