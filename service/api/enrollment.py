"""Enrollment: which uploaded images give a face worth keeping, and committing them together.

Per image: decode → detect → one face of enrollment size (smaller background faces are ignored; two
or more big enough is ``multiple_faces`` unless the request names a face policy, which then chooses
among them: enrolling a bystander under someone's name must be asked for) → quality bars. The
accepted faces of one request are embedded in one batch and committed in ONE gallery transaction:
all of them, or none.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass

import numpy as np
from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from service.api.images import decode_bytes, read_upload
from service.api.state import AppServices
from service.gallery.store import NewFace, StoredCrop
from service.pipeline.decode import ImageDecodeError
from service.pipeline.face_choice import FacePolicy, choose_face
from service.pipeline.face_pipeline import FacePipeline
from service.pipeline.quality import QualityBars, Rejection, enrollment_rejection
from service.pipeline.types import AlignedFace, ImageArray


@dataclass(frozen=True)
class Candidate:
    """An image whose face passed every check, waiting to be embedded and committed."""

    face: AlignedFace
    image: ImageArray


@dataclass(frozen=True)
class ImageOutcome:
    index: int
    filename: str | None
    candidate: Candidate | None = None
    rejection: Rejection | None = None


def _choose_face(
    pipeline: FacePipeline, image: ImageArray, bars: QualityBars, policy: FacePolicy | None
) -> tuple[AlignedFace | None, Rejection | None]:
    faces = pipeline.detect(image)
    if not faces:
        return None, Rejection("no_face", "no face found in the image")
    big_enough = [face for face in faces if min(face.width, face.height) >= bars.min_face_size]
    if len(big_enough) > 1 and policy is None:
        return None, Rejection(
            "multiple_faces",
            f"{len(big_enough)} faces of at least {bars.min_face_size:g} px; enroll images with one person "
            "or pass face_policy to choose one",
        )
    if len(big_enough) > 1 and policy is not None:
        big_enough = [big_enough[choose_face(big_enough, (image.shape[1], image.shape[0]), policy) or 0]]
    # The one big-enough face, or else the largest small one (it fails the size bar with a clear reason).
    (assessed,) = pipeline.align_and_assess(image, big_enough[:1] or faces[:1])
    return assessed, enrollment_rejection(assessed.quality, bars)


def _examine(
    services: AppServices, data: bytes, index: int, filename: str | None, policy: FacePolicy | None
) -> ImageOutcome:
    """Decode and check one image (blocking)."""
    try:
        image = decode_bytes(data, services.settings)
    except ImageDecodeError as exc:
        return ImageOutcome(
            index, filename, rejection=Rejection("invalid_image", f"{exc.code}: {exc.detail}")
        )
    face, rejection = _choose_face(services.pipeline, image, services.quality_bars, policy)
    if rejection is not None or face is None:
        return ImageOutcome(index, filename, rejection=rejection)
    return ImageOutcome(index, filename, candidate=Candidate(face, image))


async def examine_uploads(
    services: AppServices, uploads: list[UploadFile], policy: FacePolicy | None = None
) -> list[ImageOutcome]:
    """Every image's outcome, in request order; images are examined concurrently in worker threads."""
    datas = [await read_upload(upload) for upload in uploads]
    return list(
        await asyncio.gather(
            *(
                run_in_threadpool(_examine, services, data, index, upload.filename, policy)
                for index, (data, upload) in enumerate(zip(datas, uploads, strict=True))
            )
        )
    )


async def new_faces(services: AppServices, candidates: list[Candidate]) -> list[NewFace]:
    """Embed the accepted faces in one batch; keep a re-alignable crop when FACE_STORE_CROPS is on."""
    pipeline = services.pipeline
    embeddings = await pipeline.embed_chips([candidate.face.chip for candidate in candidates])
    crops: list[StoredCrop | None] = [None] * len(candidates)
    if services.settings.store_crops:

        def make_crops() -> list[StoredCrop | None]:
            return [
                StoredCrop(*pipeline.storage_crop(candidate.image, candidate.face.face))
                for candidate in candidates
            ]

        crops = await run_in_threadpool(make_crops)
    return [
        NewFace(
            embedding=np.asarray(embedding, dtype=np.float32),
            det_score=candidate.face.face.score,
            quality=dataclasses.asdict(candidate.face.quality),
            crop=crop,
        )
        for candidate, embedding, crop in zip(candidates, embeddings, crops, strict=True)
    ]
