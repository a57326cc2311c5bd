"""Liveness, readiness and Prometheus metrics: no API key needed (probes and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.api.deps import RESOURCES_STATE, Resources
from service.api.metrics import METRICS_CONTENT_TYPE
from service.api.presenters import replication_out
from service.api.schemas import HealthResponse, ReadyResponse
from service.usecases.health import readiness, render_metrics
from service.usecases.resources import ServiceResources

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: models loaded, gallery and key store readable, a replica caught up",
    responses={503: {"model": ReadyResponse, "description": "not ready yet (or shutting down)"}},
)
async def readyz(request: Request) -> JSONResponse:
    # Resources exist only once the lifespan loaded the models and opened the gallery.
    resources = getattr(request.state, RESOURCES_STATE, None)
    state = await readiness(resources if isinstance(resources, ServiceResources) else None)
    body = ReadyResponse(
        status="ready" if state.ready else "not_ready",
        checks=state.checks,
        replication=replication_out(state.replication),
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if state.ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {METRICS_CONTENT_TYPE: {}}}},
)
async def metrics(resources: Resources) -> Response:
    return Response(await render_metrics(resources), media_type=METRICS_CONTENT_TYPE)
