"""GET /v1/info: the pack, its providers, thresholds and which one is used, the gallery."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import ReadAccess, Resources
from service.api.presenters import info_response
from service.api.responses import AUTH_ERRORS
from service.api.schemas import InfoResponse
from service.usecases.info import service_info

router = APIRouter(prefix="/v1", tags=["service"], responses=AUTH_ERRORS)


@router.get("/info", summary="Pack, runtime, thresholds and gallery")
async def info(resources: Resources, _: ReadAccess) -> InfoResponse:
    return info_response(await service_info(resources))
