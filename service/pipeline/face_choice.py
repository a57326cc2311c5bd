"""Which face of an image is "the" face: one policy for verify, identify, enrollment and face-eval.

Policies rank a detector's faces; the first is chosen:
* ``largest``: the biggest box.
* ``centre``: nearest the image centre, weighted by size and detector score,
  ``score · sqrt(area) · (1 − d / r)`` with ``d`` the distance of the box centre from the image centre
  and ``r`` half the image diagonal, so that a tiny background face in the middle does not beat the
  person the photo is of.
* ``score``: the detector's most confident face.

Under every policy a *doubtful* face, a box partly outside the frame whose score is below the best
in-frame face's, ranks after every other face: a low-score detection cut by the border (a shoulder,
half a neighbour) must not beat a clear face.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from service.pipeline.types import DetectedFace
from service.settings import FacePolicy

# A box may reach this far past the border (fraction of its own size) and still count as in frame:
# detectors draw boxes a little larger than the face.
_BORDER_TOLERANCE = 0.05


def _largest(face: DetectedFace, width: int, height: int) -> float:
    return face.area


def _centre(face: DetectedFace, width: int, height: int) -> float:
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    radius = math.hypot(width, height) / 2
    distance = math.hypot(float(cx) - width / 2, float(cy) - height / 2)
    return face.score * math.sqrt(face.area) * max(0.0, 1.0 - distance / radius)


def _score(face: DetectedFace, width: int, height: int) -> float:
    return face.score


_MERITS: Mapping[FacePolicy, Callable[[DetectedFace, int, int], float]] = MappingProxyType(
    {FacePolicy.LARGEST: _largest, FacePolicy.CENTRE: _centre, FacePolicy.SCORE: _score}
)


def in_frame(face: DetectedFace, width: int, height: int) -> bool:
    """The box lies inside the image, up to a small tolerance."""
    x1, y1, x2, y2 = (float(v) for v in face.box)
    slack_x, slack_y = _BORDER_TOLERANCE * face.width, _BORDER_TOLERANCE * face.height
    return x1 >= -slack_x and y1 >= -slack_y and x2 <= width + slack_x and y2 <= height + slack_y


def doubtful_faces(faces: Sequence[DetectedFace], width: int, height: int) -> list[bool]:
    """Per face: partly outside the frame and less confident than the best in-frame face."""
    inside = [in_frame(face, width, height) for face in faces]
    best_inside = max((face.score for face, ok in zip(faces, inside, strict=True) if ok), default=math.inf)
    return [not ok and face.score < best_inside for face, ok in zip(faces, inside, strict=True)]


def rank_faces(faces: Sequence[DetectedFace], image_size: tuple[int, int], policy: FacePolicy) -> list[int]:
    """Indices of ``faces`` best first under ``policy``; ``image_size`` is (width, height)."""
    width, height = image_size
    merit = _MERITS[policy]
    doubtful = doubtful_faces(faces, width, height)
    # Stable sort: ties keep the detector's order (largest first).
    return sorted(range(len(faces)), key=lambda i: (doubtful[i], -merit(faces[i], width, height)))


def choose_face(faces: Sequence[DetectedFace], image_size: tuple[int, int], policy: FacePolicy) -> int | None:
    """Index of the face ``policy`` picks, or None when there is no face."""
    ranked = rank_faces(faces, image_size, policy)
    return ranked[0] if ranked else None


def outranks_any_face_smaller_than(
    face: DetectedFace, image_size: tuple[int, int], policy: FacePolicy, side: float
) -> bool:
    """True when no face with both sides below ``side`` pixels could rank above ``face``.

    Lets a coarse detection pass, which can miss faces that small, settle the choice: such a face's
    merit is at most ``side²`` (largest) or ``side`` (centre: score ≤ 1, centre factor ≤ 1). Under
    ``score`` any face may be the most confident one, so nothing is settled.
    """
    width, height = image_size
    if policy is FacePolicy.SCORE or not in_frame(face, width, height):
        return False
    bound = side * side if policy is FacePolicy.LARGEST else side
    return _MERITS[policy](face, width, height) > bound
