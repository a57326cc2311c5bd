"""Liveness, readiness and Prometheus metrics: no API key needed (probes and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import Services
from service.api.metrics import METRICS_CONTENT_TYPE
from service.api.schemas import HealthResponse, ReadyResponse
from service.api.state import AppServices

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


def _gallery_readable(services: AppServices) -> bool:
    try:
        services.gallery.counts()
    except Exception:  # any failure to read the store means "not ready", never a 500 from a probe
        return False
    return True


async def _readiness(request: Request) -> dict[str, bool]:
    services = getattr(request.state, "services", None)
    if not isinstance(services, AppServices):  # the lifespan has not finished loading
        return {"models": False, "gallery": False, "keys": False}
    # Services exist only once the lifespan loaded the models and opened the gallery.
    return {
        "models": bool(services.pipeline.providers),
        "gallery": await run_in_threadpool(_gallery_readable, services),
        # A key store gone bad after start would refuse every stored key: not ready.
        "keys": await run_in_threadpool(services.authenticator.store_ready),
    }


@router.get(
    "/readyz",
    summary="Readiness: models loaded, gallery and key store readable",
    responses={503: {"model": ReadyResponse, "description": "not ready yet (or shutting down)"}},
)
async def readyz(request: Request) -> JSONResponse:
    checks = await _readiness(request)
    ready = all(checks.values())
    body = ReadyResponse(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {METRICS_CONTENT_TYPE: {}}}},
)
async def metrics(services: Services) -> Response:
    sizes = await run_in_threadpool(services.gallery.sizes)
    body = await run_in_threadpool(  # rendering a large registry must not stall the event loop
        services.metrics.render,
        gallery_subjects=sizes.subjects,
        gallery_faces=sizes.faces,
        gallery_indexed_faces=sizes.indexed_faces,
    )
    return Response(body, media_type=METRICS_CONTENT_TYPE)
