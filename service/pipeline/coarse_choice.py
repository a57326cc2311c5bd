"""Choose "the" face from a coarse detection pass when that pass can settle the choice.

Verify and identify need one face per photo. Most photos hold a clear, large face, which a detector
run at half the resolution finds as well, in about a quarter of the time. The coarse pass settles
the choice only when (a) the chosen face is large enough in the coarse input for landmarks as good as
at full size, and (b) no face the coarse pass could have missed (too small at that resolution) could
rank above it under the policy. Otherwise the full-size pass runs, as without this step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from service.pipeline.detect import FaceDetector
from service.pipeline.face_choice import choose_face, outranks_any_face_smaller_than
from service.pipeline.types import DetectedFace, ImageArray
from service.settings import FacePolicy

# Faces below this many pixels (shorter side, in the coarse input) may be missed at coarse size:
# twice the smallest RetinaFace/YuNet/SCRFD anchor (16 px).
MISSED_SIDE_PX: Final = 32.0
# The chosen face must span this many coarse-input pixels for its landmarks to be trusted.
LANDMARK_MIN_SIDE_PX: Final = 64.0


@dataclass(frozen=True)
class CoarsePass:
    """A detector at ``input_size`` (longest side) that answers first when it can."""

    detector: FaceDetector
    input_size: int

    def settle(self, image: ImageArray, policy: FacePolicy) -> tuple[list[DetectedFace], int] | None:
        """(faces, chosen index) when the coarse pass decides; None when the full pass must run."""
        height, width = image.shape[:2]
        if policy is FacePolicy.SCORE or max(width, height) <= self.input_size:
            return None  # any face may be the most confident; or coarse is no coarser than full size
        scale = self.input_size / max(width, height)
        faces = self.detector.detect(image)
        index = choose_face(faces, (width, height), policy)
        if index is None or min(faces[index].width, faces[index].height) * scale < LANDMARK_MIN_SIDE_PX:
            return None
        if not outranks_any_face_smaller_than(faces[index], (width, height), policy, MISSED_SIDE_PX / scale):
            return None
        return faces, index
