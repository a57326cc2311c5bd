"""Detect: every face of an image with its box, landmarks, score and quality (no embedding)."""

from __future__ import annotations

from dataclasses import dataclass

from service.pipeline.types import AlignedFace
from service.usecases.face_work import align_all
from service.usecases.images import ImageInput, held_pixels
from service.usecases.resources import ServiceResources


@dataclass(frozen=True)
class DetectResult:
    width: int
    height: int
    faces: list[AlignedFace]  # largest first


async def detect_faces(resources: ServiceResources, image: ImageInput) -> DetectResult:
    async with held_pixels(resources, image) as pixels:
        faces = await align_all(resources, pixels)
        height, width = pixels.shape[:2]
    resources.metrics.faces_detected.inc(len(faces))
    return DetectResult(width=width, height=height, faces=faces)
