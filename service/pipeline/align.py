"""Alignment: the least-squares similarity transform from detected landmarks onto a pack's template.

``estimate_similarity`` is scikit-image's ``SimilarityTransform`` estimate (Umeyama's closed form:
rotation, uniform scale, translation minimising the summed squared distances; reflections excluded),
the same estimator insightface's ``utils/face_align.py`` uses, so chips for insightface packs are cut
exactly as insightface cuts them. OpenCV's ``estimateAffinePartial2D`` is not used: its robust methods
(RANSAC/LMEDS) fit a subset of the points, not the least-squares optimum over all five.
Coordinates are pixel coordinates with pixel centres at integers, as ``cv2.warpAffine`` reads them.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
from skimage.transform import SimilarityTransform

from service.pipeline.types import FloatArray, ImageArray

# Below this mean squared spread (pixels²) the source points coincide and no rotation is defined.
_MIN_SOURCE_VARIANCE = 1e-12


def estimate_similarity(src: FloatArray, dst: FloatArray) -> FloatArray:
    """The (2, 3) float32 matrix ``M`` of the similarity minimising ``Σ |M·[src_i, 1] − dst_i|²``.

    Umeyama, "Least-squares estimation of transformation parameters between two point patterns"
    (IEEE TPAMI 13(4), 1991), as implemented by ``skimage.transform.SimilarityTransform``.
    Raises ``ValueError`` for mismatched shapes, non-finite values or degenerate points.
    """
    matrix: FloatArray = _similarity_params(src, dst).astype(np.float32)
    return matrix


def _similarity_params(src: FloatArray, dst: FloatArray) -> npt.NDArray[np.float64]:
    """``estimate_similarity`` as scikit-image returns it (float64), before rounding to float32."""
    source = np.asarray(src, dtype=np.float64)
    target = np.asarray(dst, dtype=np.float64)
    if source.ndim != 2 or source.shape[1] != 2 or source.shape != target.shape or source.shape[0] < 2:
        raise ValueError(f"need two matching (N ≥ 2, 2) point arrays, got {source.shape} and {target.shape}")
    # Checked here because scikit-image's SVD raises LinAlgError on NaN instead of failing cleanly.
    if not (np.isfinite(source).all() and np.isfinite(target).all()):
        raise ValueError("landmarks contain NaN or infinity")
    if float(source.var(axis=0).sum()) <= _MIN_SOURCE_VARIANCE:
        raise ValueError("source landmarks coincide: no similarity transform is defined")
    # Estimated from float32 points (the landmarks' type) as insightface's estimate_norm does:
    # scikit-image computes in its inputs' precision, and the chips then equal norm_crop's bit for bit.
    transform = SimilarityTransform.from_estimate(source.astype(np.float32), target.astype(np.float32))
    if not transform:  # a FailedEstimation is falsy and says why
        raise ValueError(f"no similarity transform fits these landmarks ({transform})")
    params: npt.NDArray[np.float64] = np.asarray(transform.params[:2], dtype=np.float64)
    return params


def align_to_template(
    image: ImageArray, landmarks: FloatArray, template: FloatArray, size: tuple[int, int]
) -> ImageArray:
    """The (height, width, 3) chip of ``size`` = (width, height) whose landmarks best match ``template``.

    Bilinear sampling; pixels that fall outside the image are black (insightface's ``norm_crop`` too).
    """
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"chip size must be positive, got {size}")
    # The float64 matrix, not its float32 rounding: chips then equal insightface's norm_crop exactly.
    matrix = _similarity_params(landmarks, template)
    chip = cv2.warpAffine(
        image,
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    return np.ascontiguousarray(chip, dtype=np.uint8)
