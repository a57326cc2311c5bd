"""Alignment: the least-squares similarity transform from detected landmarks onto a pack's template.

``estimate_similarity`` is Umeyama's closed form (rotation, uniform scale, translation minimising the
summed squared distances; reflections excluded). OpenCV's ``estimateAffinePartial2D`` is not used: its
robust methods (RANSAC/LMEDS) fit a subset of the points, not the least-squares optimum over all five.
Coordinates are pixel coordinates with pixel centres at integers, as ``cv2.warpAffine`` reads them.
"""

from __future__ import annotations

import cv2
import numpy as np

from service.pipeline.types import FloatArray, ImageArray


def estimate_similarity(src: FloatArray, dst: FloatArray) -> FloatArray:
    """The (2, 3) matrix ``M`` of the similarity minimising ``Σ |M·[src_i, 1] − dst_i|²``.

    Umeyama, "Least-squares estimation of transformation parameters between two point patterns"
    (IEEE TPAMI 13(4), 1991). Raises ``ValueError`` for mismatched shapes or degenerate points.
    """
    source = np.asarray(src, dtype=np.float64)
    target = np.asarray(dst, dtype=np.float64)
    if source.ndim != 2 or source.shape[1] != 2 or source.shape != target.shape or source.shape[0] < 2:
        raise ValueError(f"need two matching (N ≥ 2, 2) point arrays, got {source.shape} and {target.shape}")
    if not (np.isfinite(source).all() and np.isfinite(target).all()):
        raise ValueError("landmarks contain NaN or infinity")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    source_variance = float((source_centred**2).sum() / len(source))
    if source_variance <= 1e-12:
        raise ValueError("source landmarks coincide: no similarity transform is defined")
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    # Force a proper rotation (det = +1): flip the axis of the smallest singular value if needed.
    signs = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) > 0 else -1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = float((singular * signs).sum() / source_variance)
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]]).astype(np.float32)


def align_to_template(
    image: ImageArray, landmarks: FloatArray, template: FloatArray, size: tuple[int, int]
) -> ImageArray:
    """The (height, width, 3) chip of ``size`` = (width, height) whose landmarks best match ``template``.

    Bilinear sampling; pixels that fall outside the image are black.
    """
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"chip size must be positive, got {size}")
    matrix = estimate_similarity(landmarks, template)
    chip = cv2.warpAffine(
        image,
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    return np.ascontiguousarray(chip, dtype=np.uint8)
