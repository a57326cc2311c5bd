"""POST /v1/identify: for every face, the top-k enrolled subjects at or above the threshold."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from service.api.deps import ReadAccess, Resources
from service.api.params import FacePolicyForm, ThresholdForm, ThresholdQuery
from service.api.presenters import identify_response
from service.api.responses import IMAGE_ERRORS
from service.api.schemas import IdentifyResponse
from service.api.uploads import image_input
from service.usecases import identify as identification

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post("/identify", summary="Identify faces against the gallery", responses=IMAGE_ERRORS)
async def identify(
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP, TIFF or PGM/PPM")],
    resources: Resources,
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
    request = identification.IdentifyRequest(
        image=await image_input(image, "image"),
        top_k=top_k,
        largest_only=largest_only,
        face_policy=face_policy,
        threshold=threshold_form if threshold_form is not None else threshold_query,
    )
    return identify_response(await identification.identify(resources, request))
