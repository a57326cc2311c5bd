"""POST /v1/detect: faces with boxes, five landmarks, detector scores and quality (no embedding)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile

from service.api.deps import ReadAccess, Resources
from service.api.presenters import detect_response
from service.api.responses import IMAGE_ERRORS
from service.api.schemas import DetectResponse
from service.api.uploads import image_input
from service.usecases.detect import detect_faces

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post("/detect", summary="Detect faces", responses=IMAGE_ERRORS)
async def detect(
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP, TIFF or PGM/PPM")],
    resources: Resources,
    _: ReadAccess,
) -> DetectResponse:
    return detect_response(await detect_faces(resources, await image_input(image, "image")))
