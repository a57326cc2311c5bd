"""POST /v1/verify: are two faces the same person? Two images, or one image against a subject."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, UploadFile

from service.api.deps import ReadAccess, Resources
from service.api.params import ThresholdQuery
from service.api.presenters import verify_response
from service.api.request_bodies import form_or_json, image_bodies
from service.api.responses import IMAGE_ERRORS, NOT_FOUND, SUBJECT_HAS_NO_FACES
from service.api.schemas import VerifyForm, VerifyJson, VerifyResponse
from service.api.uploads import image_input
from service.usecases import verify as verification

router = APIRouter(tags=["inference"])  # included under /v1 and /v1/collections/{collection}


async def _face(
    source: UploadFile | str | None, field: str, index: int | None, index_field: str, max_bytes: int
) -> verification.FaceRequest | None:
    if source is None:
        return None
    return verification.FaceRequest(await image_input(source, field, max_bytes), index, index_field)


@router.post(
    "/verify",
    summary="Verify: same person?",
    responses={**IMAGE_ERRORS, **NOT_FOUND, **SUBJECT_HAS_NO_FACES},
    openapi_extra=image_bodies(VerifyForm, VerifyJson),
)
async def verify(
    resources: Resources,
    _: ReadAccess,
    body: Annotated[VerifyForm | VerifyJson, Depends(form_or_json(VerifyForm, VerifyJson))],
    threshold_query: ThresholdQuery = None,
) -> VerifyResponse:
    limit = resources.settings.max_image_bytes
    request = verification.VerifyRequest(
        image_a=await _face(body.image_a, "image_a", body.face_index_a, "face_index_a", limit),
        image_b=await _face(body.image_b, "image_b", body.face_index_b, "face_index_b", limit),
        image=await _face(body.image, "image", body.face_index_a, "face_index_a", limit),
        subject_id=body.subject_id,
        face_policy=body.face_policy,
        threshold=body.threshold if body.threshold is not None else threshold_query,
    )
    return verify_response(await verification.verify(resources, request))
