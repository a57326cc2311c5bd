"""POST /v1/verify: are two faces the same person? Two images, or one image against a subject."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from service.api.deps import ReadAccess, Resources
from service.api.params import FacePolicyForm, ThresholdForm, ThresholdQuery
from service.api.presenters import verify_response
from service.api.responses import IMAGE_ERRORS, NOT_FOUND, SUBJECT_HAS_NO_FACES
from service.api.schemas import VerifyResponse
from service.api.uploads import image_input
from service.usecases import verify as verification

router = APIRouter(prefix="/v1", tags=["inference"])

_MAX_FACE_INDEX = 999


async def _face(
    upload: UploadFile | None, field: str, index: int | None, index_field: str
) -> verification.FaceRequest | None:
    if upload is None:
        return None
    return verification.FaceRequest(await image_input(upload, field), index, index_field)


@router.post(
    "/verify",
    summary="Verify: same person?",
    responses={**IMAGE_ERRORS, **NOT_FOUND, **SUBJECT_HAS_NO_FACES},
)
async def verify(
    resources: Resources,
    _: ReadAccess,
    image_a: Annotated[UploadFile | None, File(description="first image (pair mode)")] = None,
    image_b: Annotated[UploadFile | None, File(description="second image (pair mode)")] = None,
    image: Annotated[UploadFile | None, File(description="probe image (subject mode)")] = None,
    subject_id: Annotated[
        str | None, Form(description="enrolled subject (subject mode)", max_length=64)
    ] = None,
    face_index_a: Annotated[
        int | None,
        Form(
            ge=0, le=_MAX_FACE_INDEX, description="face of image_a/image, largest first; unset: face_policy"
        ),
    ] = None,
    face_index_b: Annotated[
        int | None,
        Form(ge=0, le=_MAX_FACE_INDEX, description="face of image_b, largest first; unset: face_policy"),
    ] = None,
    face_policy: FacePolicyForm = None,
    threshold_form: ThresholdForm = None,
    threshold_query: ThresholdQuery = None,
) -> VerifyResponse:
    request = verification.VerifyRequest(
        image_a=await _face(image_a, "image_a", face_index_a, "face_index_a"),
        image_b=await _face(image_b, "image_b", face_index_b, "face_index_b"),
        image=await _face(image, "image", face_index_a, "face_index_a"),
        subject_id=subject_id,
        face_policy=face_policy,
        threshold=threshold_form if threshold_form is not None else threshold_query,
    )
    return verify_response(await verification.verify(resources, request))
