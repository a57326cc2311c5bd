"""POST /v1/embed: every face's box and unit-norm embedding (the pack's size)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile

from service.api.deps import ReadAccess, Resources
from service.api.presenters import embed_response
from service.api.responses import IMAGE_ERRORS
from service.api.schemas import EmbedResponse
from service.api.uploads import image_input
from service.usecases.embed import embed_faces

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post("/embed", summary="Embed every face", responses=IMAGE_ERRORS)
async def embed(
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP, TIFF or PGM/PPM")],
    resources: Resources,
    _: ReadAccess,
) -> EmbedResponse:
    return embed_response(await embed_faces(resources, await image_input(image, "image")))
