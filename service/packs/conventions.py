"""Chip conventions: the one home of every embedder's chip geometry and pixel normalization.

A convention is what an embedder expects of its input: the chip's size, where the five landmarks
(``LandmarkConvention.FIVE_POINT`` order) land on it, and how its pixels are normalized. Packs
(insightface's file tables), export (the pack builders), training (face-train's alignment and input
scaling) and the tests all take these named values from here; a manifest records them field by field,
so changing a value here changes pack ids (``export.pack_writer.embedding_fingerprint``). No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np
import numpy.typing as npt

from service.packs.manifest import ColorOrder, PixelNormalization, Point, TemplateDerivation

FivePointTemplate = tuple[Point, Point, Point, Point, Point]


def five_point_template(points: Sequence[Sequence[float]]) -> FivePointTemplate:
    """Five (x, y) chip coordinates as the manifest's fixed-length tuple; refuses other shapes."""
    pairs = [tuple(float(v) for v in point) for point in points]
    if len(pairs) != 5 or any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"a 5-point template needs five (x, y) pairs, got {points!r}")
    (a, b), (c, d), (e, f), (g, h), (i, j) = pairs
    return ((a, b), (c, d), (e, f), (g, h), (i, j))


@dataclass(frozen=True)
class ChipConvention:
    """What an embedder expects: chip size, where the 5 landmarks land, and pixel normalization."""

    name: str
    input_size: tuple[int, int]  # (width, height)
    template: FivePointTemplate  # chip pixels, pixel centres at integers
    template_derivation: TemplateDerivation
    normalization: PixelNormalization

    def scaled_template(self, size: tuple[int, int]) -> npt.NDArray[np.float32]:
        """The template for a chip of ``size`` (width, height), scaled per axis in float32.

        face-train and ``face-export export`` scale templates this way; the float32 arithmetic is
        part of what their packs record, so it must not change.
        """
        width, height = self.input_size
        scale = np.array([size[0] / width, size[1] / height], dtype=np.float32)
        return np.asarray(self.template, dtype=np.float32) * scale


# insightface/utils/face_align.py ``arcface_dst``: where its ArcFace models expect the 5 points.
ARCFACE_TEMPLATE_112: Final[FivePointTemplate] = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
ARCFACE_TEMPLATE_DERIVATION: Final = TemplateDerivation(
    method="insightface arcface_dst (insightface/utils/face_align.py): the template its ArcFace "
    "recognition models were trained with",
)
# ArcFaceONNX.get_feat: cv2.dnn.blobFromImages(img, 1/127.5, ..., mean 127.5, swapRB=True) on BGR
# images, i.e. RGB channels scaled to [-1, 1]. face-train feeds its models the same.
ARCFACE_NORMALIZATION: Final = PixelNormalization(
    color_order=ColorOrder.RGB, mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5)
)
# For graphs that normalize internally (SFace computes (x − 127.5) / 128 itself): raw RGB 0..255.
RAW_RGB: Final = PixelNormalization(color_order=ColorOrder.RGB, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

# Produced by `python -m export.chip_template` (the derivation lives there; see docs/pipeline.md):
# RetinaFace's five points where dlib's get_face_chip(..., 150, 0.25) puts them, in chip pixels.
DLIB_CHIP_TEMPLATE_150: Final[FivePointTemplate] = (
    (47.44, 43.05),
    (101.56, 43.05),
    (74.50, 77.50),
    (51.42, 100.67),
    (97.58, 100.67),
)
DLIB_CHIP_TEMPLATE_150_DERIVATION: Final = TemplateDerivation(
    method=(
        "mean of RetinaFace (default detector) 5-point landmarks mapped into dlib get_face_chip "
        "(size=150, padding=0.25) coordinates; dlib HOG detector (upsample 1) + "
        "shape_predictor_5_face_landmarks; chip transform from get_face_chip_details; images and their "
        "mirror images; symmetrised by averaging with left/right mirrored samples. Check on "
        "deepface_testset (61 faces, not used to fit): mean landmark residual 4.03 px, mean chip pixel "
        "displacement vs dlib's chips 3.35 px"
    ),
    data="insightface 2.1 wheel, insightface/data/images/{t1.jpg,Tom_Hanks_54745.png}",
    samples=13,
    residual_px=7.384,
)
# dlib's input_rgb_image_sized stores these means (float32); its to_tensor divides by 256, not a std.
DLIB_NORMALIZATION: Final = PixelNormalization(
    color_order=ColorOrder.RGB, mean=(122.782, 117.001, 104.298), std=(256.0, 256.0, 256.0)
)

# insightface / arcface_torch chips: 112×112 ArcFace template, RGB, (x − 127.5) / 127.5.
ARCFACE_112: Final = ChipConvention(
    name="arcface112",
    input_size=(112, 112),
    template=ARCFACE_TEMPLATE_112,
    template_derivation=ARCFACE_TEMPLATE_DERIVATION,
    normalization=ARCFACE_NORMALIZATION,
)
# SFace (OpenCV zoo): ArcFace 112×112 chips, raw RGB pixels (the graph normalizes).
SFACE_112: Final = ChipConvention(
    name="sface112",
    input_size=(112, 112),
    template=ARCFACE_TEMPLATE_112,
    template_derivation=ARCFACE_TEMPLATE_DERIVATION,
    normalization=RAW_RGB,
)
# dlib's ResNet: 150×150 chips with get_face_chip(..., 150, 0.25) geometry, RGB (x − mean) / 256.
DLIB_150: Final = ChipConvention(
    name="dlib150",
    input_size=(150, 150),
    template=DLIB_CHIP_TEMPLATE_150,
    template_derivation=DLIB_CHIP_TEMPLATE_150_DERIVATION,
    normalization=DLIB_NORMALIZATION,
)

CHIP_CONVENTIONS: Final[Mapping[str, ChipConvention]] = MappingProxyType(
    {convention.name: convention for convention in (ARCFACE_112, SFACE_112, DLIB_150)}
)
