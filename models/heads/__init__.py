"""Margin heads (softmax, NormFace, SphereFace, CosFace, ArcFace, combined) behind one interface."""

from models.heads.base import MarginHead
from models.heads.margins import (
    ArcFaceHead,
    CombinedMarginHead,
    CosFaceHead,
    NormFaceHead,
    SoftmaxHead,
    SphereFaceArccosHead,
)
from models.heads.registry import HEADS, build_head, head_class, head_names, head_options
from models.heads.sphereface import LambdaSchedule, SphereFaceHead

__all__ = [
    "HEADS",
    "ArcFaceHead",
    "CombinedMarginHead",
    "CosFaceHead",
    "LambdaSchedule",
    "MarginHead",
    "NormFaceHead",
    "SoftmaxHead",
    "SphereFaceArccosHead",
    "SphereFaceHead",
    "build_head",
    "head_class",
    "head_names",
    "head_options",
]
