"""Data passed between pipeline stages (plain dataclasses; pydantic lives at the API edge)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
ImageArray = npt.NDArray[np.uint8]  # H×W×3 RGB, uint8


@dataclass(frozen=True)
class DetectedFace:
    box: FloatArray  # (4,) x1, y1, x2, y2 in image pixels
    score: float
    landmarks: FloatArray  # (5, 2) in LandmarkConvention.FIVE_POINT order, image pixels

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


@dataclass(frozen=True)
class FaceQuality:
    size: float  # shorter side of the box, pixels
    det_score: float
    sharpness: float  # variance of the Laplacian of the aligned grey chip
    yaw_deg: float
    pitch_deg: float
    roll_deg: float


@dataclass(frozen=True)
class AlignedFace:
    face: DetectedFace
    quality: FaceQuality
    chip: ImageArray  # the aligned crop (RGB) at the embedder's input size


@dataclass(frozen=True)
class EmbeddedFace:
    face: DetectedFace
    quality: FaceQuality
    chip: ImageArray  # the aligned crop (RGB), as fed to the embedder before normalization
    embedding: FloatArray  # (D,) float32, unit L2 norm
