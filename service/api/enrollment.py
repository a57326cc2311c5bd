"""Enrollment: which uploaded images give a face worth keeping, and committing them together.

Per image: decode → detect → one face of enrollment size (smaller background faces are ignored; two
or more big enough is ``multiple_faces`` unless the request names a face policy, which then chooses
among them: enrolling a bystander under someone's name must be asked for) → quality bars. The
accepted faces of one request are embedded in one batch and committed in ONE gallery transaction:
all of them, or none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from service.api.gather import gather_all
from service.api.images import busy_error, open_upload, read_upload
from service.api.state import AppServices
from service.gallery.store import NewFace, StoredCrop
from service.pipeline.decode import ImageDecodeError, OpenedImage
from service.pipeline.face_choice import choose_face
from service.pipeline.face_pipeline import FacePipeline
from service.pipeline.pixel_budget import PixelBudgetBusyError
from service.pipeline.quality import QualityBars, Rejection, enrollment_rejection
from service.pipeline.types import AlignedFace, ImageArray
from service.settings import FacePolicy


@dataclass(frozen=True)
class Candidate:
    """An image whose face passed every check, waiting to be embedded and committed.

    Only the chip and the storage crop are kept: the decoded image is released once examined.
    """

    face: AlignedFace
    crop: StoredCrop | None


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


def _invalid_image(index: int, filename: str | None, exc: ImageDecodeError) -> ImageOutcome:
    return ImageOutcome(index, filename, rejection=Rejection("invalid_image", f"{exc.code}: {exc.detail}"))


def _examine(
    services: AppServices, opened: OpenedImage, index: int, filename: str | None, policy: FacePolicy | None
) -> ImageOutcome:
    """Decode and check one image, and cut its storage crop (blocking)."""
    try:
        image = opened.decode()
    except ImageDecodeError as exc:
        return _invalid_image(index, filename, exc)
    face, rejection = _choose_face(services.pipeline, image, services.quality_bars, policy)
    if rejection is not None or face is None:
        return ImageOutcome(index, filename, rejection=rejection)
    crop = (
        StoredCrop(*services.pipeline.storage_crop(image, face.face))
        if services.settings.store_crops
        else None
    )
    return ImageOutcome(index, filename, candidate=Candidate(face, crop))


async def _examine_upload(
    services: AppServices, data: bytes, index: int, filename: str | None, policy: FacePolicy | None
) -> ImageOutcome:
    """Header checks, then decode + detect + align within the pixel budget (large JPEGs drafted)."""
    try:
        opened = await run_in_threadpool(open_upload, data, services.settings, draft=True)
    except ImageDecodeError as exc:
        return _invalid_image(index, filename, exc)
    with opened:
        async with services.pixel_budget.hold(opened.decoded_pixels):
            return await run_in_threadpool(_examine, services, opened, index, filename, policy)


async def examine_uploads(
    services: AppServices, uploads: list[UploadFile], policy: FacePolicy | None = None
) -> list[ImageOutcome]:
    """Every image's outcome, in request order; images are examined concurrently in worker threads.

    Raises ``ApiError`` 503 (nothing is stored) when the pixel budget stays full too long.
    """
    datas = [await read_upload(upload) for upload in uploads]
    try:
        return list(
            await gather_all(
                *(
                    _examine_upload(services, data, index, upload.filename, policy)
                    for index, (data, upload) in enumerate(zip(datas, uploads, strict=True))
                )
            )
        )
    except PixelBudgetBusyError as exc:
        raise busy_error(exc) from None


async def new_faces(services: AppServices, candidates: list[Candidate]) -> list[NewFace]:
    """Embed the accepted faces in one batch, with their re-alignable crops (FACE_STORE_CROPS)."""
    embeddings = await services.pipeline.embed_chips([candidate.face.chip for candidate in candidates])
    return [
        NewFace(
            embedding=np.asarray(embedding, dtype=np.float32),
            det_score=candidate.face.face.score,
            quality=dataclasses.asdict(candidate.face.quality),
            crop=candidate.crop,
        )
        for candidate, embedding in zip(candidates, embeddings, strict=True)
    ]
