"""POST /v1/detect: faces with boxes, five landmarks, detector scores and quality (no embedding)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from service.api.deps import ReadAccess, Resources
from service.api.presenters import detect_response
from service.api.request_bodies import form_or_json, image_bodies
from service.api.responses import IMAGE_ERRORS
from service.api.schemas import DetectResponse, ImageForm, ImageJson
from service.api.uploads import image_input
from service.usecases.detect import detect_faces

router = APIRouter(tags=["inference"])  # included under /v1 and /v1/collections/{collection}


@router.post(
    "/detect",
    summary="Detect faces",
    responses=IMAGE_ERRORS,
    openapi_extra=image_bodies(ImageForm, ImageJson),
)
async def detect(
    resources: Resources,
    _: ReadAccess,
    body: Annotated[ImageForm | ImageJson, Depends(form_or_json(ImageForm, ImageJson))],
) -> DetectResponse:
    image = await image_input(body.image, "image", resources.settings.max_image_bytes)
    return detect_response(await detect_faces(resources, image))
