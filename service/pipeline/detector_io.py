"""What every detector decoder shares: letterboxed input, the model run, and the final face filtering.

A decoder (RetinaFace, SCRFD, YuNet) only turns raw model outputs into candidate boxes, scores and
landmarks in model input pixels. Around that, identical for all: the letterbox preprocessing the
spec prescribes (colour order, mean/std, fixed or dynamic input size), a check at construction that
the model has the declared input and outputs, one run fetching the outputs by name, and the mapping
back to image pixels followed by score, minimum size, NMS and largest-first selection.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Generic, TypeVar

import cv2
import numpy as np
import numpy.typing as npt

from service.packs.manifest import (
    ColorOrder,
    DetectorSpec,
    RetinaFaceDecoder,
    ScrfdDecoder,
    YuNetDecoder,
)
from service.pipeline.detect import DetectionOptions
from service.pipeline.session import InferenceSession
from service.pipeline.types import DetectedFace, FloatArray, ImageArray

_PRE_NMS_TOP_K: Final = 5000  # best-scoring candidates kept before NMS (bounds its cost)
_CHANNEL_ORDER: Mapping[ColorOrder, tuple[int, int, int]] = MappingProxyType(
    {ColorOrder.RGB: (0, 1, 2), ColorOrder.BGR: (2, 1, 0)}  # indices into the RGB image
)

DecoderT = TypeVar("DecoderT", RetinaFaceDecoder, ScrfdDecoder, YuNetDecoder)


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


@dataclass(frozen=True)
class DetectorModel(Generic[DecoderT]):
    """A detector's session bound to its spec: the outputs to fetch, grouped as the decoder reads them.

    Outputs come back as consecutive groups of ``len(output_widths)`` arrays (one group per stride,
    or a single group), each reshaped to (rows, width).
    """

    spec: DetectorSpec
    decoder: DecoderT
    session: InferenceSession
    options: DetectionOptions
    output_names: tuple[str, ...]
    output_widths: tuple[int, ...]  # values per row of each output of a group

    def run(self, image: ImageArray) -> tuple[DetectorInput, list[tuple[FloatArray, ...]]]:
        """The prepared input and the model's outputs for ``image``, in groups."""
        prepared = prepare_input(image, self.spec, self.options.input_size)
        raw = self.session.run(list(self.output_names), {self.spec.input_name: prepared.blob})
        size = len(self.output_widths)
        groups = [
            tuple(output_rows(raw[start + k], width) for k, width in enumerate(self.output_widths))
            for start in range(0, len(raw), size)
        ]
        return prepared, groups

    def faces(
        self, boxes: FloatArray, scores: FloatArray, points: FloatArray, prepared: DetectorInput
    ) -> list[DetectedFace]:
        """Candidates in model input pixels → the selected faces in image pixels."""
        return select_faces(
            to_image_coordinates(boxes, prepared),
            scores.astype(np.float32),
            to_image_coordinates(points, prepared),
            self.options,
        )


def decoder_of(spec: DetectorSpec, decoder_type: type[DecoderT], detector: str) -> DecoderT:
    """``spec.decoder`` when it is a ``decoder_type`` (TypeError naming both kinds otherwise)."""
    if not isinstance(spec.decoder, decoder_type):
        wanted = decoder_type.model_fields["kind"].default
        raise TypeError(f"{detector} needs a {wanted!r} decoder, got {spec.decoder.kind!r}")
    return spec.decoder


def bind_model(
    spec: DetectorSpec,
    decoder: DecoderT,
    session: InferenceSession,
    options: DetectionOptions,
    output_names: Sequence[str],
    output_widths: tuple[int, ...],
) -> DetectorModel[DecoderT]:
    """The bound model, after checking that ``session`` has the input and outputs ``spec`` declares."""
    if len(output_names) % len(output_widths):
        raise ValueError(f"{len(output_names)} outputs do not form groups of {len(output_widths)}")
    check_model_names(spec, session, tuple(output_names))
    return DetectorModel(spec, decoder, session, options, tuple(output_names), output_widths)


def check_model_names(spec: DetectorSpec, session: InferenceSession, output_names: tuple[str, ...]) -> None:
    """Fail early, naming names, when the session lacks the input or outputs ``spec`` declares."""
    inputs = {node.name for node in session.get_inputs()}
    if spec.input_name not in inputs:
        raise ValueError(f"detector model has no input {spec.input_name!r}; it has {sorted(inputs)}")
    outputs = {node.name for node in session.get_outputs()}
    missing = [name for name in output_names if name not in outputs]
    if missing:
        raise ValueError(f"detector model lacks the declared outputs {missing}; it has {sorted(outputs)}")


def output_rows(output: npt.NDArray[Any], width: int) -> FloatArray:
    """One output of a one-image run as (rows, width) float32, with or without a leading batch axis."""
    rows: FloatArray = np.asarray(output, dtype=np.float32).reshape(-1, width)
    return rows


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
