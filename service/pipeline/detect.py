"""Face detection's contract: the ``FaceDetector`` protocol and the ``DetectionOptions`` it runs with.

Detectors are built in one place, ``service.pipeline.detectors``, from the pack's ``DetectorSpec``;
the decoders (``detect_retinaface``, ``detect_scrfd``, ``detect_yunet``) share their input and output
handling through ``service.pipeline.detector_io``. Imports run one way: this module ← detector_io ←
decoders ← detectors.

Coordinates: boxes and landmarks are continuous image coordinates in the original image's pixels,
x to the right and y down (the same frame ``cv2.warpAffine`` uses). Boxes are not clipped to the
image: a face cut by the border keeps its full extent, which alignment needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from service.packs.manifest import DetectorSpec
from service.pipeline.types import DetectedFace, ImageArray

if TYPE_CHECKING:
    from service.settings import Settings


class FaceDetector(Protocol):
    def detect(self, image: ImageArray) -> list[DetectedFace]:
        """Faces in an H×W×3 RGB uint8 image, largest box first."""
        ...


@dataclass(frozen=True)
class DetectionOptions:
    input_size: int  # longest side of the image as fed to a model with dynamic input size
    score_threshold: float
    nms_threshold: float  # IoU above which the lower-scored of two boxes is dropped
    max_faces: int  # the largest faces are kept
    min_face_size: int  # pixels, shorter side of the box in the original image

    def __post_init__(self) -> None:
        if self.input_size < 32:
            raise ValueError(f"input_size must be at least 32 pixels, got {self.input_size}")
        if not 0.0 < self.score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in (0, 1), got {self.score_threshold}")
        if not 0.0 < self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in (0, 1], got {self.nms_threshold}")
        if self.max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, got {self.max_faces}")
        if self.min_face_size < 0:
            raise ValueError(f"min_face_size must be non-negative, got {self.min_face_size}")

    @classmethod
    def for_spec(
        cls,
        spec: DetectorSpec,
        *,
        input_size: int = 640,
        max_faces: int = 32,
        min_face_size: int = 16,
        score_threshold: float | None = None,
        nms_threshold: float | None = None,
    ) -> DetectionOptions:
        """Options for ``spec``'s model: its recommended thresholds unless overridden.

        The defaults are ``Settings``' (FACE_DET_INPUT_SIZE, FACE_MAX_FACES, FACE_MIN_FACE_SIZE), so a
        tool that builds a detector without settings detects as the service does.
        """
        return cls(
            input_size=input_size,
            score_threshold=spec.score_threshold if score_threshold is None else score_threshold,
            nms_threshold=spec.nms_threshold if nms_threshold is None else nms_threshold,
            max_faces=max_faces,
            min_face_size=min_face_size,
        )

    @classmethod
    def from_settings(cls, settings: Settings, spec: DetectorSpec) -> DetectionOptions:
        """The settings, with the pack's recommended thresholds where no override is set."""
        return cls.for_spec(
            spec,
            input_size=settings.det_input_size,
            max_faces=settings.max_faces,
            min_face_size=settings.min_face_size,
            score_threshold=settings.det_score_threshold,
            nms_threshold=settings.det_nms_threshold,
        )
