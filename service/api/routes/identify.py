"""POST /v1/identify: for every face, the top-k enrolled subjects at or above the threshold."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from service.api.deps import ReadAccess, Services
from service.api.images import held_image
from service.api.params import FacePolicyForm, ThresholdForm, ThresholdQuery
from service.api.presenters import box_of, readable_name, similarity_of
from service.api.responses import IMAGE_ERRORS
from service.api.schemas import CandidateOut, IdentifiedFaceOut, IdentifyResponse, ThresholdOut
from service.api.state import AppServices
from service.pipeline.types import EmbeddedFace, ImageArray
from service.settings import FacePolicy

router = APIRouter(prefix="/v1", tags=["inference"])


async def _chosen_only(services: AppServices, pixels: ImageArray, policy: FacePolicy) -> list[EmbeddedFace]:
    """The one face ``policy`` chooses, embedded (no face: an empty list)."""
    faces, index = await run_in_threadpool(services.pipeline.detect_chosen, pixels, policy)
    if index is None:
        return []
    aligned = await run_in_threadpool(services.pipeline.align_and_assess, pixels, [faces[index]])
    return await services.pipeline.embed_aligned(aligned)


@router.post("/identify", summary="Identify faces against the gallery", responses=IMAGE_ERRORS)
async def identify(
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP, TIFF or PGM/PPM")],
    services: Services,
    _: ReadAccess,
    top_k: Annotated[
        int | None, Form(ge=1, le=100, description="subjects per face (default FACE_IDENTIFY_TOP_K)")
    ] = None,
    largest_only: Annotated[
        bool, Form(description="only one face: the one face_policy chooses (the name predates the policy)")
    ] = False,
    face_policy: FacePolicyForm = None,
    threshold_form: ThresholdForm = None,
    threshold_query: ThresholdQuery = None,
) -> IdentifyResponse:
    threshold = services.thresholds.resolve(threshold_form if threshold_form is not None else threshold_query)
    k = top_k if top_k is not None else services.settings.identify_top_k
    policy = face_policy or services.settings.face_policy
    async with held_image(image, "image", services) as pixels:
        faces = await (
            _chosen_only(services, pixels, policy) if largest_only else services.pipeline.analyze(pixels)
        )
    services.metrics.faces_detected.inc(len(faces))
    services.metrics.faces_embedded.inc(len(faces))
    candidates = (
        await run_in_threadpool(
            services.gallery.identify, np.stack([face.embedding for face in faces]), k, threshold.value
        )
        if faces
        else []
    )
    return IdentifyResponse(
        threshold=ThresholdOut(name=threshold.name, value=threshold.value),
        top_k=k,
        faces=[
            IdentifiedFaceOut(
                box=box_of(face.face),
                score=face.face.score,
                unknown=not found,
                candidates=[
                    CandidateOut(
                        subject_id=c.subject_id,
                        name=readable_name(c.name),
                        similarity=similarity_of(c.similarity),
                        face_id=c.face_id,
                    )
                    for c in found
                ],
            )
            for face, found in zip(faces, candidates, strict=True)
        ],
    )
