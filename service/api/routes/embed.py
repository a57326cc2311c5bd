"""POST /v1/embed: every face's box and unit-norm embedding (the pack's size)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from service.api.deps import ReadAccess, Resources
from service.api.presenters import embed_response
from service.api.request_bodies import form_or_json, image_bodies
from service.api.responses import IMAGE_ERRORS
from service.api.schemas import EmbedResponse, ImageForm, ImageJson
from service.api.uploads import image_input
from service.usecases.embed import embed_faces

router = APIRouter(tags=["inference"])  # included under /v1 and /v1/collections/{collection}


@router.post(
    "/embed",
    summary="Embed every face",
    responses=IMAGE_ERRORS,
    openapi_extra=image_bodies(ImageForm, ImageJson),
)
async def embed(
    resources: Resources,
    _: ReadAccess,
    body: Annotated[ImageForm | ImageJson, Depends(form_or_json(ImageForm, ImageJson))],
) -> EmbedResponse:
    image = await image_input(body.image, "image", resources.settings.max_image_bytes)
    return embed_response(await embed_faces(resources, image))
