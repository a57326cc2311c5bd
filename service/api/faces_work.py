"""Face work the routes share, kept off the event loop: detection and alignment in worker threads."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from service.pipeline.face_pipeline import FacePipeline
from service.pipeline.types import AlignedFace, ImageArray


async def detect_faces(pipeline: FacePipeline, image: ImageArray) -> list[AlignedFace]:
    """Every face (largest first), aligned and assessed, not embedded."""
    return await run_in_threadpool(pipeline.detect_and_align, image)
