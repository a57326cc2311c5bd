"""SCRFD decoding (insightface's detectors, e.g. ``det_10g.onnx``, ``scrfd_10g_bnkps.onnx``).

Conventions (from insightface's ``model_zoo/scrfd.py``): per stride the feature map is
``(H // stride) × (W // stride)``; locations are row-major and each carries ``anchors_per_location``
consecutive anchors, all centred at ``(col · stride, row · stride)`` (no half-pixel offset). Per stride
the model outputs scores (N, 1), already sigmoided, box distances (N, 4) and keypoint offsets (N, 10),
both in units of the stride: ``x1 = cx − d0·s, y1 = cy − d1·s, x2 = cx + d2·s, y2 = cy + d3·s`` and
``kp_k = centre + offset_k · s``. Outputs may or may not have a leading batch axis.
"""

from __future__ import annotations

import numpy as np

from service.packs.manifest import DetectorSpec, ScrfdDecoder
from service.pipeline.detect import DetectionOptions
from service.pipeline.detector_io import bind_model, decoder_of
from service.pipeline.session import InferenceSession
from service.pipeline.types import DetectedFace, FloatArray, ImageArray


class ScrfdDetector:
    """A ``FaceDetector`` for SCRFD models with keypoints (anchor centres cached per input shape)."""

    def __init__(self, spec: DetectorSpec, session: InferenceSession, options: DetectionOptions) -> None:
        decoder = decoder_of(spec, ScrfdDecoder, "ScrfdDetector")
        if len(decoder.outputs) != len(decoder.strides):
            raise ValueError("scrfd decoder: one (scores, bbox, kps) output triple per stride is needed")
        if decoder.anchors_per_location < 1:
            raise ValueError("scrfd decoder: anchors_per_location must be at least 1")
        names = [name for triple in decoder.outputs for name in triple]
        self._model = bind_model(spec, decoder, session, options, names, (1, 4, 10))
        self._decoder = decoder
        self._options = options
        # (height, width, stride) -> (N, 2) anchor centres in input pixels.
        self._centres: dict[tuple[int, int, int], FloatArray] = {}

    def detect(self, image: ImageArray) -> list[DetectedFace]:
        prepared, groups = self._model.run(image)
        all_scores, all_boxes, all_points = [], [], []
        for stride, (scores, distances, offsets) in zip(self._decoder.strides, groups, strict=True):
            centres = self._centres_for(prepared.height, prepared.width, stride)
            if not scores.shape[0] == distances.shape[0] == offsets.shape[0] == centres.shape[0]:
                raise ValueError(
                    f"scrfd stride {stride}: outputs have {scores.shape[0]}/{distances.shape[0]}/"
                    f"{offsets.shape[0]} rows, the decoder expects {centres.shape[0]} anchors for a "
                    f"{prepared.width}×{prepared.height} input"
                )
            # Decode only candidates above the threshold: most anchors are background.
            keep = np.flatnonzero(scores[:, 0] >= self._options.score_threshold)
            all_scores.append(scores[keep, 0])
            all_boxes.append(distance_to_box(centres[keep], distances[keep], stride))
            all_points.append(offsets_to_points(centres[keep], offsets[keep], stride))
        return self._model.faces(
            np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_points), prepared
        )

    def _centres_for(self, height: int, width: int, stride: int) -> FloatArray:
        key = (height, width, stride)
        if key not in self._centres:
            self._centres[key] = anchor_centres(height, width, stride, self._decoder.anchors_per_location)
        return self._centres[key]


def anchor_centres(height: int, width: int, stride: int, anchors_per_location: int) -> FloatArray:
    """(rows · cols · anchors, 2) x, y of anchor centres in input pixels, row-major."""
    rows, cols = height // stride, width // stride
    ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    centres = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32) * stride
    return np.repeat(centres, anchors_per_location, axis=0)


def distance_to_box(centres: FloatArray, distances: FloatArray, stride: int) -> FloatArray:
    """(N, 4) x1, y1, x2, y2 from distances (left, top, right, bottom) given in strides."""
    scaled = distances * stride
    return np.hstack([centres - scaled[:, :2], centres + scaled[:, 2:]]).astype(np.float32)


def offsets_to_points(centres: FloatArray, offsets: FloatArray, stride: int) -> FloatArray:
    """(N, 10) interleaved x, y of five keypoints from offsets given in strides."""
    return (np.tile(centres, 5) + offsets * stride).astype(np.float32)
