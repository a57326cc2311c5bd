"""POST /v1/detect: faces with boxes, five landmarks, detector scores and quality (no embedding)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile

from service.api.deps import ReadAccess, Services
from service.api.faces_work import detect_faces
from service.api.images import held_image
from service.api.presenters import box_of, landmarks_of, quality_of
from service.api.responses import IMAGE_ERRORS
from service.api.schemas import DetectedFaceOut, DetectResponse, ImageSize

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post("/detect", summary="Detect faces", responses=IMAGE_ERRORS)
async def detect(
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP, TIFF or PGM/PPM")],
    services: Services,
    _: ReadAccess,
) -> DetectResponse:
    async with held_image(image, "image", services) as pixels:
        faces = await detect_faces(services.pipeline, pixels)
        height, width = pixels.shape[:2]
    services.metrics.faces_detected.inc(len(faces))
    return DetectResponse(
        image=ImageSize(width=width, height=height),
        faces=[
            DetectedFaceOut(
                box=box_of(item.face),
                landmarks=landmarks_of(item.face),
                score=item.face.score,
                quality=quality_of(item.quality),
            )
            for item in faces
        ],
    )
