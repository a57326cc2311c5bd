"""POST /v1/embed: every face's box and unit-norm embedding (the pack's size)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile

from service.api.deps import ReadAccess, Services
from service.api.images import held_image
from service.api.presenters import box_of
from service.api.responses import IMAGE_ERRORS
from service.api.schemas import EmbeddedFaceOut, EmbedResponse

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post("/embed", summary="Embed every face", responses=IMAGE_ERRORS)
async def embed(
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP, TIFF or PGM/PPM")],
    services: Services,
    _: ReadAccess,
) -> EmbedResponse:
    async with held_image(image, "image", services) as pixels:
        faces = await services.pipeline.analyze(pixels)
    services.metrics.faces_detected.inc(len(faces))
    services.metrics.faces_embedded.inc(len(faces))
    return EmbedResponse(
        pack_id=services.pipeline.pack_id,
        embedding_size=services.pipeline.embedding_size,
        faces=[
            EmbeddedFaceOut(box=box_of(face.face), score=face.face.score, embedding=face.embedding.tolist())
            for face in faces
        ],
    )
