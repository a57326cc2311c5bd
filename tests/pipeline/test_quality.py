"""Quality: pose from five landmarks, sharpness, and the enrollment bars."""

from __future__ import annotations

import math
from importlib import resources

import cv2
import numpy as np
import pytest

from export.chip_template import DLIB_CHIP_TEMPLATE_150, default_retinaface_detector
from service.pipeline.align import align_to_template
from service.pipeline.decode import decode_image
from service.pipeline.detect import FaceDetector
from service.pipeline.quality import (
    QualityBars,
    Rejection,
    assess_quality,
    enrollment_rejection,
    estimate_pose,
    sharpness,
)
from service.pipeline.types import DetectedFace, FaceQuality, ImageArray

ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
TEMPLATE_150 = np.asarray(DLIB_CHIP_TEMPLATE_150, dtype=np.float32)
BARS = QualityBars(
    min_face_size=40, min_det_score=0.8, min_sharpness=10.0, max_yaw_deg=45.0, max_pitch_deg=40.0
)

# A generic 3-D face (x right, y down, z towards the camera; eye centres, nose tip, mouth corners).
GENERIC_FACE = np.array(
    [
        [-150.0, -170.0, -135.0],
        [150.0, -170.0, -135.0],
        [0.0, 0.0, 0.0],
        [-150.0, 150.0, -125.0],
        [150.0, 150.0, -125.0],
    ]
)


def project(yaw_deg: float = 0.0, pitch_deg: float = 0.0) -> np.ndarray:
    """Orthographic image of the generic face turned by yaw (about y), then tilted by pitch (about x)."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    turn = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    tilt = np.array(
        [[1, 0, 0], [0, math.cos(pitch), math.sin(pitch)], [0, -math.sin(pitch), math.cos(pitch)]]
    )
    points = GENERIC_FACE @ turn.T @ tilt.T
    return (points[:, :2] / 5 + 300).astype(np.float32)


def rotate(points: np.ndarray, degrees: float, scale: float = 1.0) -> np.ndarray:
    centre = points.mean(axis=0)
    matrix = cv2.getRotationMatrix2D(
        (float(centre[0]), float(centre[1])), -degrees, scale
    )  # cv2: CCW positive
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def face_with(
    landmarks: np.ndarray, score: float = 0.99, box: tuple[float, ...] = (0, 0, 100, 120)
) -> DetectedFace:
    return DetectedFace(box=np.asarray(box, dtype=np.float32), score=score, landmarks=landmarks)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return default_retinaface_detector()


@pytest.fixture(scope="module")
def group_photo() -> ImageArray:
    data = (resources.files("insightface") / "data" / "images" / "t1.jpg").read_bytes()
    return decode_image(data, max_bytes=1 << 26, max_pixels=1 << 26)


def test_the_frontal_template_has_no_pose() -> None:
    pose = estimate_pose(ARCFACE_112)
    assert abs(pose.yaw_deg) < 1.0
    assert abs(pose.pitch_deg) < 1.0
    assert abs(pose.roll_deg) < 1.0


@pytest.mark.parametrize("roll", [-40.0, -10.0, 15.0, 60.0])
def test_roll_is_the_eye_line_angle_and_leaves_yaw_and_pitch_alone(roll: float) -> None:
    base = estimate_pose(project(yaw_deg=20.0, pitch_deg=10.0))
    pose = estimate_pose(rotate(project(yaw_deg=20.0, pitch_deg=10.0), roll, scale=1.7))
    assert pose.roll_deg == pytest.approx(base.roll_deg + roll, abs=1e-3)
    assert pose.yaw_deg == pytest.approx(base.yaw_deg, abs=1e-3)
    assert pose.pitch_deg == pytest.approx(base.pitch_deg, abs=1e-3)


@pytest.mark.parametrize("yaw", [-50.0, -25.0, 0.0, 25.0, 50.0])
def test_yaw_of_a_turned_generic_face(yaw: float) -> None:
    # The constants come from this generic face, so the orthographic estimate is close to exact.
    assert estimate_pose(project(yaw_deg=yaw)).yaw_deg == pytest.approx(yaw, abs=2.0)


@pytest.mark.parametrize("pitch", [-30.0, -10.0, 10.0, 30.0])
def test_pitch_sign_and_size_on_a_tilted_generic_face(pitch: float) -> None:
    # The frontal nose position comes from ArcFace's template, not the generic face: a few degrees off.
    offset = estimate_pose(project()).pitch_deg
    estimated = estimate_pose(project(pitch_deg=pitch)).pitch_deg - offset
    assert math.copysign(1.0, estimated) == math.copysign(1.0, pitch)
    assert estimated == pytest.approx(pitch, abs=6.0)


def test_mirrored_real_faces_have_opposite_yaw_and_roll(
    detector: FaceDetector, group_photo: ImageArray
) -> None:
    faces = detector.detect(group_photo)
    mirrored = detector.detect(np.ascontiguousarray(group_photo[:, ::-1]))
    width = group_photo.shape[1]
    assert len(faces) == len(mirrored) == 6
    turned = 0
    for face in faces:
        centre_x = width - (face.box[0] + face.box[2]) / 2
        twin = min(mirrored, key=lambda other: abs((other.box[0] + other.box[2]) / 2 - centre_x))
        pose, twin_pose = estimate_pose(face.landmarks), estimate_pose(twin.landmarks)
        assert twin_pose.roll_deg == pytest.approx(-pose.roll_deg, abs=5.0)
        if abs(pose.yaw_deg) > 30:  # landmarks of turned faces are noisier: the direction must hold
            turned += 1
            assert math.copysign(1.0, twin_pose.yaw_deg) == -math.copysign(1.0, pose.yaw_deg)
        else:
            assert twin_pose.yaw_deg == pytest.approx(-pose.yaw_deg, abs=8.0)
            assert twin_pose.pitch_deg == pytest.approx(pose.pitch_deg, abs=8.0)
    assert turned >= 1  # the photo has people looking sideways


def test_sharpness_drops_with_blur(detector: FaceDetector, group_photo: ImageArray) -> None:
    face = detector.detect(group_photo)[0]
    chip = align_to_template(group_photo, face.landmarks, TEMPLATE_150, (150, 150))
    blurred = np.asarray(cv2.GaussianBlur(chip, (0, 0), 2.0), dtype=np.uint8)
    assert sharpness(chip) > 2 * sharpness(blurred) > 0
    assert sharpness(np.full((150, 150, 3), 90, dtype=np.uint8)) == 0.0


def test_assess_quality_of_a_real_face(detector: FaceDetector, group_photo: ImageArray) -> None:
    for face in detector.detect(group_photo):
        chip = align_to_template(group_photo, face.landmarks, TEMPLATE_150, (150, 150))
        quality = assess_quality(face, chip)
        assert quality.size == pytest.approx(min(face.width, face.height))
        assert quality.det_score == face.score
        assert quality.sharpness == pytest.approx(sharpness(chip))
        pose = estimate_pose(face.landmarks)
        assert (quality.yaw_deg, quality.pitch_deg, quality.roll_deg) == (
            pose.yaw_deg,
            pose.pitch_deg,
            pose.roll_deg,
        )


def good_quality(**changes: float) -> FaceQuality:
    values = {
        "size": 120.0,
        "det_score": 0.99,
        "sharpness": 80.0,
        "yaw_deg": 5.0,
        "pitch_deg": -3.0,
        "roll_deg": 12.0,
    }
    return FaceQuality(**(values | changes))


def test_a_good_face_passes() -> None:
    assert enrollment_rejection(good_quality(), BARS) is None
    assert enrollment_rejection(good_quality(roll_deg=80.0), BARS) is None  # alignment removes roll


@pytest.mark.parametrize(
    ("changes", "code", "mentions"),
    [
        ({"size": 39.0}, "face_too_small", "39"),
        ({"det_score": 0.5}, "low_quality", "score"),
        ({"sharpness": 3.0}, "low_quality", "sharpness"),
        ({"yaw_deg": -50.0}, "low_quality", "yaw"),
        ({"pitch_deg": 41.0}, "low_quality", "pitch"),
        ({"size": 10.0, "sharpness": 1.0}, "face_too_small", "10"),  # size is reported first
    ],
)
def test_each_bar_rejects_with_its_reason(changes: dict, code: str, mentions: str) -> None:
    rejection = enrollment_rejection(good_quality(**changes), BARS)
    assert isinstance(rejection, Rejection)
    assert rejection.code == code
    assert mentions in rejection.detail


def test_bars_from_settings() -> None:
    from service.settings import Settings

    settings = Settings(enroll_min_face_size=64, enroll_max_yaw_deg=30.0)
    bars = QualityBars.from_settings(settings)
    assert bars.min_face_size == 64
    assert bars.max_yaw_deg == 30.0
    assert bars.min_det_score == settings.enroll_min_det_score
