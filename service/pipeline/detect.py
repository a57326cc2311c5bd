"""Face detection: the ``FaceDetector`` protocol, its options, and what every decoder shares.

A detector is built from the pack's ``DetectorSpec``: ``build_detector`` picks the decoder class by
``spec.decoder.kind``. Shared here: letterbox preprocessing per the spec (colour order, mean/std, fixed
or dynamic input size) and the final filtering (score, minimum size, NMS, largest faces first).

Coordinates: boxes and landmarks are continuous image coordinates in the original image's pixels,
x to the right and y down (the same frame ``cv2.warpAffine`` uses). Boxes are not clipped to the
image: a face cut by the border keeps its full extent, which alignment needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Protocol

import cv2
import numpy as np

from service.packs.manifest import ColorOrder, DetectorSpec
from service.pipeline.types import DetectedFace, FloatArray, ImageArray

if TYPE_CHECKING:
    import onnxruntime

    from service.settings import Settings

_PRE_NMS_TOP_K: Final = 5000  # best-scoring candidates kept before NMS (bounds its cost)
_CHANNEL_ORDER: Mapping[ColorOrder, tuple[int, int, int]] = MappingProxyType(
    {ColorOrder.RGB: (0, 1, 2), ColorOrder.BGR: (2, 1, 0)}  # indices into the RGB image
)


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
    def from_settings(cls, settings: Settings, spec: DetectorSpec) -> DetectionOptions:
        """The settings, with the pack's recommended thresholds where no override is set."""
        score = settings.det_score_threshold
        nms = settings.det_nms_threshold
        return cls(
            input_size=settings.det_input_size,
            score_threshold=spec.score_threshold if score is None else score,
            nms_threshold=spec.nms_threshold if nms is None else nms,
            max_faces=settings.max_faces,
            min_face_size=settings.min_face_size,
        )


@dataclass(frozen=True)
class DetectorInput:
    """A letterboxed, normalized NCHW float32 batch of one image, and how it maps back."""

    blob: FloatArray  # (1, 3, H, W)
    scale_x: float  # resized width / original width
    scale_y: float  # resized height / original height

    @property
    def height(self) -> int:
        return int(self.blob.shape[2])

    @property
    def width(self) -> int:
        return int(self.blob.shape[3])


def prepare_input(image: ImageArray, spec: DetectorSpec, input_size: int) -> DetectorInput:
    """Resize keeping the aspect ratio, pad bottom/right with black, normalize per ``spec``.

    A model with a fixed input gets the image fitted into that size; a dynamic one gets the longest
    side scaled to ``input_size`` and both sides padded up to ``spec.input_size_multiple``.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 RGB image, got shape {image.shape} and {image.dtype}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ValueError("cannot detect faces in an empty image")
    resized_w, resized_h, canvas_w, canvas_h = _letterbox_geometry(width, height, spec, input_size)
    scale = resized_w / width
    # INTER_AREA when shrinking avoids aliasing that hides small faces; bilinear when enlarging.
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (resized_w, resized_h), interpolation=interpolation)
    canvas = np.zeros((canvas_h, canvas_w, 3), dtype=np.float32)
    canvas[:resized_h, :resized_w] = resized

    norm = spec.normalization
    ordered = canvas[:, :, list(_CHANNEL_ORDER[norm.color_order])]
    mean = np.asarray(norm.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(norm.std, dtype=np.float32)
    normalized = (ordered - mean) * inv_std
    blob = np.ascontiguousarray(normalized.transpose(2, 0, 1)[None], dtype=np.float32)
    return DetectorInput(blob=blob, scale_x=resized_w / width, scale_y=resized_h / height)


def _letterbox_geometry(
    width: int, height: int, spec: DetectorSpec, input_size: int
) -> tuple[int, int, int, int]:
    """(resized width, resized height, canvas width, canvas height) for an image of this size."""
    if spec.fixed_input_size is not None:
        canvas_w, canvas_h = spec.fixed_input_size
        scale = min(canvas_w / width, canvas_h / height)
        return (
            min(max(1, round(width * scale)), canvas_w),
            min(max(1, round(height * scale)), canvas_h),
            canvas_w,
            canvas_h,
        )
    scale = input_size / max(width, height)
    resized_w, resized_h = max(1, round(width * scale)), max(1, round(height * scale))
    multiple = spec.input_size_multiple
    return (
        resized_w,
        resized_h,
        math.ceil(resized_w / multiple) * multiple,
        math.ceil(resized_h / multiple) * multiple,
    )


def to_image_coordinates(points: FloatArray, prepared: DetectorInput) -> FloatArray:
    """Map (..., 2k) interleaved x, y coordinates from model input pixels back to the original image."""
    scale = np.tile(np.asarray([prepared.scale_x, prepared.scale_y], dtype=np.float32), points.shape[-1] // 2)
    return (points / scale).astype(np.float32)


def select_faces(
    boxes: FloatArray, scores: FloatArray, landmarks: FloatArray, options: DetectionOptions
) -> list[DetectedFace]:
    """Score threshold, minimum size, NMS, then the ``max_faces`` largest, largest first.

    ``boxes`` (N, 4) x1, y1, x2, y2, ``scores`` (N,), ``landmarks`` (N, 10), all in image pixels.
    The size filter runs before NMS so that a small spurious box cannot suppress a real face.
    """
    sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    keep = np.flatnonzero((scores >= options.score_threshold) & (sizes >= options.min_face_size))
    keep = keep[np.argsort(-scores[keep], kind="stable")[:_PRE_NMS_TOP_K]]
    if keep.size == 0:
        return []
    xywh = np.column_stack([boxes[keep, :2], boxes[keep, 2:] - boxes[keep, :2]])
    # Scores were thresholded above; 0.0 keeps cv2 from applying its own (strict ">") threshold.
    survivors = cv2.dnn.NMSBoxes(xywh.tolist(), scores[keep].tolist(), 0.0, options.nms_threshold)
    kept = keep[np.asarray(survivors, dtype=np.int64).reshape(-1)]
    faces = [
        DetectedFace(
            box=boxes[i].astype(np.float32),
            score=float(scores[i]),
            landmarks=landmarks[i].reshape(5, 2).astype(np.float32),
        )
        for i in kept
    ]
    faces.sort(key=lambda face: face.area, reverse=True)
    return faces[: options.max_faces]


DetectorFactory = Callable[[DetectorSpec, "onnxruntime.InferenceSession", DetectionOptions], FaceDetector]


def build_detector(
    spec: DetectorSpec, session: onnxruntime.InferenceSession, options: DetectionOptions
) -> FaceDetector:
    """The detector for ``spec.decoder.kind`` running on ``session``."""
    factories = _detector_factories()
    try:
        factory = factories[spec.decoder.kind]
    except KeyError:
        raise ValueError(
            f"no detector for decoder kind {spec.decoder.kind!r}; known: {', '.join(sorted(factories))}"
        ) from None
    return factory(spec, session, options)


def _detector_factories() -> Mapping[str, DetectorFactory]:
    # Imported here because the decoder modules import this module's shared helpers.
    from service.pipeline.detect_retinaface import RetinaFaceDetector
    from service.pipeline.detect_scrfd import ScrfdDetector
    from service.pipeline.detect_yunet import YuNetDetector

    return {"retinaface": RetinaFaceDetector, "scrfd": ScrfdDetector, "yunet": YuNetDetector}


def check_model_names(
    spec: DetectorSpec, session: onnxruntime.InferenceSession, output_names: tuple[str, ...]
) -> None:
    """Fail early, naming names, when the session lacks the input or outputs ``spec`` declares."""
    inputs = {node.name for node in session.get_inputs()}
    if spec.input_name not in inputs:
        raise ValueError(f"detector model has no input {spec.input_name!r}; it has {sorted(inputs)}")
    outputs = {node.name for node in session.get_outputs()}
    missing = [name for name in output_names if name not in outputs]
    if missing:
        raise ValueError(f"detector model lacks the declared outputs {missing}; it has {sorted(outputs)}")
