"""Face work the routes share, kept off the event loop: detection in worker threads, embedding batched."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from service.pipeline.face_pipeline import FacePipeline
from service.pipeline.quality import assess_quality
from service.pipeline.types import DetectedFace, FaceQuality, ImageArray


@dataclass(frozen=True)
class AssessedFace:
    face: DetectedFace
    quality: FaceQuality
    chip: ImageArray


def assess_faces(pipeline: FacePipeline, image: ImageArray, faces: list[DetectedFace]) -> list[AssessedFace]:
    """Align each face and measure its quality (blocking)."""
    assessed = []
    for face in faces:
        chip = pipeline.align(image, face)
        assessed.append(AssessedFace(face, assess_quality(face, chip), chip))
    return assessed


def detect_and_assess(pipeline: FacePipeline, image: ImageArray) -> list[AssessedFace]:
    """Every face (largest first) with its quality, without embedding (blocking)."""
    return assess_faces(pipeline, image, pipeline.detect(image))


async def detect_faces(pipeline: FacePipeline, image: ImageArray) -> list[AssessedFace]:
    return await run_in_threadpool(detect_and_assess, pipeline, image)
