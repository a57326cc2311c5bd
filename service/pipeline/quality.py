"""Face quality: size, detector score, sharpness and a head pose estimated from the five landmarks.

Pose is an approximation from five 2-D points under an orthographic camera and a generic face whose
nose tip stands in front of the plane of the eyes and mouth corners:

* roll: the angle of the line from the left to the right eye centre (positive: clockwise in the image,
  i.e. the right eye lower).
* The points are then rotated by −roll about the eye midpoint, so that the eye line is horizontal.
* yaw: a head turned by θ moves the nose tip sideways by ``depth · sin θ`` relative to the face's
  midline (the mean of the eye and mouth midpoints) while the eye distance shrinks by ``cos θ``, so
  ``tan θ = (nose offset / eye distance) / NOSE_DEPTH_PER_EYE_DISTANCE``. Positive yaw: the nose
  points to the image's right.
* pitch: with ``t`` the nose's vertical position between the eye line (0) and the mouth line (1),
  ``tan φ = (t − FRONTAL_NOSE_POSITION) / NOSE_DEPTH_PER_EYE_MOUTH_DISTANCE``. Positive pitch: the
  face tilts down (chin towards the chest).

The depth ratios come from a generic 3-D face (nose tip ≈ 13 cm in front of the eye/mouth plane for
a 30 cm eye distance and 32 cm eye-to-mouth distance, in the units of the classic solvePnP head
model); the frontal nose position from insightface's ArcFace 112×112 template (eye line y = 51.6,
nose 71.7, mouth 92.3). Expect errors of several degrees and saturation past ~60°: good enough to
reject turned or tilted enrollment photos, not a pose estimator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import cv2
import numpy as np

from service.pipeline.types import DetectedFace, FaceQuality, FloatArray, ImageArray

if TYPE_CHECKING:
    from service.settings import Settings

NOSE_DEPTH_PER_EYE_DISTANCE: Final = 130.0 / 300.0
NOSE_DEPTH_PER_EYE_MOUTH_DISTANCE: Final = 130.0 / 320.0
FRONTAL_NOSE_POSITION: Final = (71.7366 - 51.6225) / ((92.3655 + 92.2041) / 2 - 51.6225)
_EYE_L, _EYE_R, _NOSE, _MOUTH_L, _MOUTH_R = range(5)


@dataclass(frozen=True)
class HeadPose:
    yaw_deg: float
    pitch_deg: float
    roll_deg: float


def estimate_pose(landmarks: FloatArray) -> HeadPose:
    """Approximate yaw, pitch and roll in degrees from five landmarks (see the module docstring)."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eye_vector = points[_EYE_R] - points[_EYE_L]
    eye_distance = float(np.hypot(*eye_vector))
    if eye_distance <= 1e-6:
        return HeadPose(yaw_deg=90.0, pitch_deg=0.0, roll_deg=0.0)  # eyes coincide: full profile
    roll = math.atan2(eye_vector[1], eye_vector[0])
    eye_mid = (points[_EYE_L] + points[_EYE_R]) / 2
    cos_r, sin_r = math.cos(-roll), math.sin(-roll)
    derotate = np.array([[cos_r, -sin_r], [sin_r, cos_r]])
    upright = (points - eye_mid) @ derotate.T  # eye midpoint at the origin, eye line along +x

    mouth_mid = (upright[_MOUTH_L] + upright[_MOUTH_R]) / 2
    nose = upright[_NOSE]
    midline_x = mouth_mid[0] / 2  # mean of the eye midpoint (x = 0) and the mouth midpoint
    yaw = math.atan2((nose[0] - midline_x) / eye_distance, NOSE_DEPTH_PER_EYE_DISTANCE)
    eye_to_mouth = mouth_mid[1]
    if eye_to_mouth <= 1e-6:
        pitch = math.copysign(math.pi / 2, -nose[1]) if nose[1] != 0 else 0.0
    else:
        position = nose[1] / eye_to_mouth
        pitch = math.atan2(position - FRONTAL_NOSE_POSITION, NOSE_DEPTH_PER_EYE_MOUTH_DISTANCE)
    return HeadPose(yaw_deg=math.degrees(yaw), pitch_deg=math.degrees(pitch), roll_deg=math.degrees(roll))


def sharpness(chip: ImageArray) -> float:
    """Variance of the Laplacian of the grey chip: low for blurred or featureless faces."""
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def assess_quality(face: DetectedFace, chip: ImageArray) -> FaceQuality:
    """Quality of a detected face; ``chip`` is its aligned crop (RGB uint8)."""
    pose = estimate_pose(face.landmarks)
    return FaceQuality(
        size=max(0.0, min(face.width, face.height)),
        det_score=face.score,
        sharpness=sharpness(chip),
        yaw_deg=pose.yaw_deg,
        pitch_deg=pose.pitch_deg,
        roll_deg=pose.roll_deg,
    )


@dataclass(frozen=True)
class QualityBars:
    """What an enrollment photo must reach. Roll is not barred: alignment removes it."""

    min_face_size: float
    min_det_score: float
    min_sharpness: float
    max_yaw_deg: float
    max_pitch_deg: float

    @classmethod
    def from_settings(cls, settings: Settings) -> QualityBars:
        return cls(
            min_face_size=settings.enroll_min_face_size,
            min_det_score=settings.enroll_min_det_score,
            min_sharpness=settings.enroll_min_sharpness,
            max_yaw_deg=settings.enroll_max_yaw_deg,
            max_pitch_deg=settings.enroll_max_pitch_deg,
        )


@dataclass(frozen=True)
class Rejection:
    code: str  # "face_too_small" or "low_quality"
    detail: str  # which bar was missed, with the measured value


def enrollment_rejection(quality: FaceQuality, bars: QualityBars) -> Rejection | None:
    """Why this face may not be enrolled (the first bar missed), or None when it passes them all."""
    if quality.size < bars.min_face_size:
        return Rejection(
            "face_too_small",
            f"the face is {quality.size:.0f} px; at least {bars.min_face_size:g} px is needed",
        )
    checks = (
        (
            quality.det_score < bars.min_det_score,
            f"detector score {quality.det_score:.2f} is below {bars.min_det_score:g}",
        ),
        (
            quality.sharpness < bars.min_sharpness,
            f"the face is blurred: sharpness {quality.sharpness:.1f} is below {bars.min_sharpness:g}",
        ),
        (
            abs(quality.yaw_deg) > bars.max_yaw_deg,
            f"the head is turned: yaw {quality.yaw_deg:+.0f}° exceeds ±{bars.max_yaw_deg:g}°",
        ),
        (
            abs(quality.pitch_deg) > bars.max_pitch_deg,
            f"the head is tilted: pitch {quality.pitch_deg:+.0f}° exceeds ±{bars.max_pitch_deg:g}°",
        ),
    )
    for failed, detail in checks:
        if failed:
            return Rejection("low_quality", detail)
    return None
