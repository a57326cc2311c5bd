"""GET /v1/info: the pack, its providers, thresholds and which one is used, the gallery."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.api.deps import ReadAccess, Services
from service.api.responses import AUTH_ERRORS
from service.api.schemas import GalleryInfo, InfoResponse, OperatingPointOut, ThresholdOut

router = APIRouter(prefix="/v1", tags=["service"], responses=AUTH_ERRORS)


@router.get("/info", summary="Pack, runtime, thresholds and gallery")
async def info(services: Services, _: ReadAccess) -> InfoResponse:
    manifest = services.pack.manifest
    counts = await run_in_threadpool(services.gallery.counts)
    default = services.thresholds.default
    return InfoResponse(
        pack_id=manifest.id,
        pack_description=manifest.description,
        embedding_size=manifest.embedding_size,
        embedder_input_size=manifest.chip_size,
        flip_augmentation=manifest.embedder.flip_augmentation,
        providers=services.pipeline.providers,
        operating_points={
            name: OperatingPointOut(threshold=point.threshold, far=point.far, source=point.source)
            for name, point in sorted(manifest.calibration.operating_points.items())
        },
        threshold=ThresholdOut(name=default.name, value=default.value),
        subject_score=services.settings.subject_score.value,
        gallery=GalleryInfo(
            subjects=counts.subjects, faces=counts.faces, index_type=str(services.gallery.index_kind)
        ),
        auth_enabled=services.authenticator.enabled,
    )
