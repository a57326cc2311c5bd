"""POST /v1/identify: for every face, the top-k enrolled subjects at or above the threshold.
POST /v1/identify/embedding: the same for an embedding the client made with the gallery's pack."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from service.api.deps import ReadAccess, Resources
from service.api.params import ThresholdQuery
from service.api.presenters import embedding_matches_response, identify_response
from service.api.request_bodies import form_or_json, image_bodies
from service.api.responses import AUTH_ERRORS, IMAGE_ERRORS
from service.api.schemas import (
    IdentifyEmbeddingRequest,
    IdentifyEmbeddingResponse,
    IdentifyForm,
    IdentifyJson,
    IdentifyResponse,
    Problem,
)
from service.api.uploads import image_input
from service.usecases import identify as identification

router = APIRouter(tags=["inference"])  # included under /v1 and /v1/collections/{collection}


@router.post(
    "/identify",
    summary="Identify faces against the gallery",
    responses=IMAGE_ERRORS,
    openapi_extra=image_bodies(IdentifyForm, IdentifyJson),
)
async def identify(
    resources: Resources,
    _: ReadAccess,
    body: Annotated[IdentifyForm | IdentifyJson, Depends(form_or_json(IdentifyForm, IdentifyJson))],
    threshold_query: ThresholdQuery = None,
) -> IdentifyResponse:
    request = identification.IdentifyRequest(
        image=await image_input(body.image, "image", resources.settings.max_image_bytes),
        top_k=body.top_k,
        largest_only=body.largest_only,
        face_policy=body.face_policy,
        threshold=body.threshold if body.threshold is not None else threshold_query,
    )
    return identify_response(await identification.identify(resources, request))


@router.post(
    "/identify/embedding",
    summary="Identify an embedding made with the gallery's pack",
    description="For clients that embed on their side with the same pack (`pack_id` as `/v1/embed` and "
    "`/v1/info` name it). The vector is normalized to unit length before the search.",
    responses={
        **AUTH_ERRORS,
        409: {"model": Problem, "description": "`pack_id` is not the gallery's pack (`body.pack_id`)"},
        422: {"model": Problem, "description": "wrong length, non-finite or zero embedding, invalid field"},
    },
)
async def identify_embedding(
    body: IdentifyEmbeddingRequest,
    resources: Resources,
    _: ReadAccess,
    threshold_query: ThresholdQuery = None,
) -> IdentifyEmbeddingResponse:
    query = identification.EmbeddingQuery(
        embedding=body.embedding,
        pack_id=body.pack_id,
        top_k=body.top_k,
        threshold=body.threshold if body.threshold is not None else threshold_query,
    )
    return embedding_matches_response(await identification.identify_embedding(resources, query))
