"""YuNet decoding (OpenCV zoo ``face_detection_yunet_2023mar``), as OpenCV's ``FaceDetectorYN`` does it.

Per stride the feature map is ``(H // stride) × (W // stride)`` cells, row-major, one prediction per
cell: ``cls`` and ``obj`` scores (sigmoided; the face score is ``sqrt(cls · obj)``), a box as centre
offset and log size in strides, and five keypoints as offsets from the cell's corner in strides. The
input is raw BGR 0..255, padded to a multiple of 32 (the pack declares that, not this module).
"""

from __future__ import annotations

import numpy as np

from service.packs.manifest import DetectorSpec, YuNetDecoder
from service.pipeline.detect import DetectionOptions
from service.pipeline.detector_io import bind_model, decoder_of
from service.pipeline.session import InferenceSession
from service.pipeline.types import DetectedFace, FloatArray, ImageArray


class YuNetDetector:
    """A ``FaceDetector`` for YuNet models (cell corners cached per input shape)."""

    def __init__(self, spec: DetectorSpec, session: InferenceSession, options: DetectionOptions) -> None:
        decoder = decoder_of(spec, YuNetDecoder, "YuNetDetector")
        if len(decoder.outputs) != len(decoder.strides):
            raise ValueError("yunet decoder: one (cls, obj, bbox, kps) output group per stride is needed")
        names = [name for group in decoder.outputs for name in group]
        self._model = bind_model(spec, decoder, session, options, names, (1, 1, 4, 10))
        self._decoder = decoder
        self._options = options
        self._corners: dict[tuple[int, int, int], FloatArray] = {}

    def detect(self, image: ImageArray) -> list[DetectedFace]:
        prepared, groups = self._model.run(image)
        all_scores, all_boxes, all_points = [], [], []
        for stride, (cls, obj, bbox, kps) in zip(self._decoder.strides, groups, strict=True):
            corners = self._corners_for(prepared.height, prepared.width, stride)
            if not cls.shape[0] == bbox.shape[0] == kps.shape[0] == corners.shape[0]:
                raise ValueError(
                    f"yunet stride {stride}: outputs have {cls.shape[0]}/{bbox.shape[0]}/{kps.shape[0]} "
                    f"rows, the decoder expects {corners.shape[0]} cells for a "
                    f"{prepared.width}×{prepared.height} input"
                )
            scores = np.sqrt(np.clip(cls[:, 0], 0.0, 1.0) * np.clip(obj[:, 0], 0.0, 1.0))
            keep = np.flatnonzero(scores >= self._options.score_threshold)  # most cells are background
            all_scores.append(scores[keep])
            all_boxes.append(cell_boxes(corners[keep], bbox[keep], stride))
            all_points.append(cell_points(corners[keep], kps[keep], stride))
        return self._model.faces(
            np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_points), prepared
        )

    def _corners_for(self, height: int, width: int, stride: int) -> FloatArray:
        key = (height, width, stride)
        if key not in self._corners:
            rows, cols = height // stride, width // stride
            ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            self._corners[key] = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
        return self._corners[key]


def cell_boxes(corners: FloatArray, bbox: FloatArray, stride: int) -> FloatArray:
    """(N, 4) x1, y1, x2, y2 from (dx, dy, log w, log h) predictions in strides."""
    centres = (corners + bbox[:, :2]) * stride
    sizes = np.exp(bbox[:, 2:]) * stride
    return np.hstack([centres - sizes / 2, centres + sizes / 2]).astype(np.float32)


def cell_points(corners: FloatArray, kps: FloatArray, stride: int) -> FloatArray:
    """(N, 10) interleaved x, y of five keypoints from offsets in strides."""
    return ((np.tile(corners, 5) + kps) * stride).astype(np.float32)
