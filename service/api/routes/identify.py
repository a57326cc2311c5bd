"""POST /v1/identify: for every face, the top-k enrolled subjects at or above the threshold."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from service.api.deps import ReadAccess, Services
from service.api.images import load_image
from service.api.params import ThresholdForm, ThresholdQuery
from service.api.presenters import box_of
from service.api.responses import IMAGE_ERRORS
from service.api.schemas import CandidateOut, IdentifiedFaceOut, IdentifyResponse, ThresholdOut

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post("/identify", summary="Identify faces against the gallery", responses=IMAGE_ERRORS)
async def identify(
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP")],
    services: Services,
    _: ReadAccess,
    top_k: Annotated[
        int | None, Form(ge=1, le=100, description="subjects per face (default FACE_IDENTIFY_TOP_K)")
    ] = None,
    largest_only: Annotated[bool, Form(description="only the largest face")] = False,
    threshold_form: ThresholdForm = None,
    threshold_query: ThresholdQuery = None,
) -> IdentifyResponse:
    threshold = services.thresholds.resolve(threshold_form if threshold_form is not None else threshold_query)
    k = top_k if top_k is not None else services.settings.identify_top_k
    pixels = await load_image(image, "image", services.settings)
    faces = await services.pipeline.analyze(pixels, max_faces=1 if largest_only else None)
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
                        subject_id=c.subject_id, name=c.name, similarity=c.similarity, face_id=c.face_id
                    )
                    for c in found
                ],
            )
            for face, found in zip(faces, candidates, strict=True)
        ],
    )
