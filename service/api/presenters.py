"""Pipeline dataclasses → response models (the one place that knows both shapes)."""

from __future__ import annotations

from service.api.schemas import Box, Landmarks, Quality
from service.pipeline.types import DetectedFace, FaceQuality


def box_of(face: DetectedFace) -> Box:
    x1, y1, x2, y2 = (float(v) for v in face.box)
    return Box(x1=x1, y1=y1, x2=x2, y2=y2)


def landmarks_of(face: DetectedFace) -> Landmarks:
    # Rows follow LandmarkConvention.FIVE_POINT: eye_l, eye_r, nose, mouth_l, mouth_r.
    points = [(float(x), float(y)) for x, y in face.landmarks]
    return Landmarks(
        left_eye=points[0], right_eye=points[1], nose=points[2], mouth_left=points[3], mouth_right=points[4]
    )


def quality_of(quality: FaceQuality) -> Quality:
    return Quality(
        size=quality.size,
        det_score=quality.det_score,
        sharpness=quality.sharpness,
        yaw_deg=quality.yaw_deg,
        pitch_deg=quality.pitch_deg,
        roll_deg=quality.roll_deg,
    )
