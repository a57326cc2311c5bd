"""Alignment: the least-squares similarity and the warp onto a template, checked on real faces."""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
import pytest
from skimage.transform import SimilarityTransform

from export.chip_template import DLIB_CHIP_TEMPLATE_150, default_retinaface_detector
from service.pipeline.align import align_to_template, estimate_similarity
from service.pipeline.decode import decode_image
from service.pipeline.detect import FaceDetector
from service.pipeline.types import ImageArray

ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
TEMPLATE_150 = np.asarray(DLIB_CHIP_TEMPLATE_150, dtype=np.float32)


def similarity_matrix(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array(
        [[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]]
    )


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return default_retinaface_detector()


@pytest.fixture(scope="module")
def group_photo() -> ImageArray:
    data = (resources.files("insightface") / "data" / "images" / "t1.jpg").read_bytes()
    return decode_image(data, max_bytes=1 << 26, max_pixels=1 << 26)


@pytest.mark.parametrize(
    ("scale", "angle", "tx", "ty"),
    [(0.4, 0.0, 10.0, -3.0), (2.5, 37.0, -80.0, 12.5), (1.0, -170.0, 0.0, 0.0)],
)
def test_recovers_an_exact_similarity(scale: float, angle: float, tx: float, ty: float) -> None:
    truth = similarity_matrix(scale, angle, tx, ty)
    source = ARCFACE_112 * 3 + 40
    estimated = estimate_similarity(source, apply(truth, source).astype(np.float32))
    assert estimated.shape == (2, 3)
    assert estimated.dtype == np.float32
    np.testing.assert_allclose(estimated, truth, atol=1e-4 * max(1.0, abs(tx), abs(ty)))


def test_is_the_least_squares_optimum_on_noisy_points() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        source = (rng.normal(size=(5, 2)) * 40 + 200).astype(np.float32)
        target = (rng.normal(size=(5, 2)) * 15 + 60).astype(np.float32)
        ours = estimate_similarity(source, target).astype(np.float64)
        reference = SimilarityTransform.from_estimate(source.astype(np.float64), target.astype(np.float64))
        np.testing.assert_allclose(ours, reference.params[:2], rtol=1e-4, atol=1e-3)
        # And no nearby similarity does better.
        best = float(((apply(ours, source) - target) ** 2).sum())
        for delta in np.eye(6).reshape(6, 2, 3) * 1e-3:
            nudged = ours + delta
            nudged[1, 1], nudged[1, 0] = nudged[0, 0], -nudged[0, 1]  # stay a similarity
            assert ((apply(nudged, source) - target) ** 2).sum() >= best - 1e-6


def test_never_reflects() -> None:
    mirrored = ARCFACE_112.copy()
    mirrored[:, 0] = -mirrored[:, 0]
    matrix = estimate_similarity(mirrored, ARCFACE_112)
    assert np.linalg.det(matrix[:, :2]) > 0


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (np.zeros((5, 2)), ARCFACE_112),  # all points coincide
        (ARCFACE_112, ARCFACE_112[:4]),  # different counts
        (ARCFACE_112[:, :1], ARCFACE_112[:, :1]),  # not 2-D points
        (np.full((5, 2), np.nan), ARCFACE_112),
    ],
)
def test_rejects_bad_points(src: np.ndarray, dst: np.ndarray) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - several distinct messages
        estimate_similarity(src.astype(np.float32), dst.astype(np.float32))


def test_chip_shape_is_height_by_width(group_photo: ImageArray, detector: FaceDetector) -> None:
    face = detector.detect(group_photo)[0]
    chip = align_to_template(group_photo, face.landmarks, ARCFACE_112 * np.float32(96 / 112), (96, 112))
    assert chip.shape == (112, 96, 3)
    assert chip.dtype == np.uint8
    assert chip.flags["C_CONTIGUOUS"]


def test_aligned_real_faces_land_on_the_template(group_photo: ImageArray, detector: FaceDetector) -> None:
    """Detecting again on each aligned chip puts the landmarks back where the template says."""
    faces = detector.detect(group_photo)
    assert len(faces) == 6
    errors = []
    for face in faces:
        chip = align_to_template(group_photo, face.landmarks, TEMPLATE_150, (150, 150))
        again = detector.detect(chip)
        if not again:
            continue
        # The chip was cut so that these landmarks sit here (the template, up to the fit's residual)...
        fitted = apply(estimate_similarity(face.landmarks, TEMPLATE_150), face.landmarks)
        # ...and the detector, looking at the chip itself, agrees up to its own noise on a tight crop
        # (a few pixels; a wrong warp direction, axis order or scale would be tens of pixels off).
        errors.append(float(np.linalg.norm(again[0].landmarks - fitted, axis=1).mean()))
    assert len(errors) >= 5
    assert max(errors) < 10.0
    assert np.mean(errors) < 6.0


def test_pixels_outside_the_image_are_black(group_photo: ImageArray, detector: FaceDetector) -> None:
    face = detector.detect(group_photo)[0]
    # Shrinking the template 4× around its centre pulls in a view 4× wider than the face; moving the
    # face to the image's left edge puts part of that view outside the image.
    template = ((TEMPLATE_150 - 75) / 4 + 75).astype(np.float32)
    at_edge = face.landmarks - np.array([face.box[0], 0], dtype=np.float32)
    chip = align_to_template(group_photo, at_edge, template, (150, 150))
    matrix = estimate_similarity(at_edge, template).astype(np.float64)
    inverse = np.linalg.inv(np.vstack([matrix, np.array([[0.0, 0.0, 1.0]])]))
    rows, cols = np.mgrid[:150, :150]
    source = np.stack([cols, rows, np.ones_like(rows)], axis=-1) @ inverse[:2].T
    height, width = group_photo.shape[:2]
    outside = (
        (source[..., 0] < -1) | (source[..., 1] < -1) | (source[..., 0] > width) | (source[..., 1] > height)
    )
    inside = (
        (source[..., 0] > 1)
        & (source[..., 1] > 1)
        & (source[..., 0] < width - 2)
        & (source[..., 1] < height - 2)
    )
    assert outside.sum() > 1000
    assert (chip[outside] == 0).all()
    assert chip[inside].mean() > 20
