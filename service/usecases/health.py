"""Readiness checks and the metrics exposition: what a probe or a scraper asks the service."""

from __future__ import annotations

from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker

# Every check fails before the resources exist (start-up not finished) or after shutdown.
NOT_LOADED: dict[str, bool] = {"models": False, "gallery": False, "keys": False}


def _gallery_readable(resources: ServiceResources) -> bool:
    try:
        resources.gallery.counts()
    except Exception:  # any failure to read the store means "not ready", never an error from a probe
        return False
    return True


async def readiness(resources: ServiceResources | None) -> dict[str, bool]:
    """Each check by name: models loaded, gallery readable, key store readable."""
    if resources is None:
        return dict(NOT_LOADED)
    return {
        "models": bool(resources.pipeline.providers),
        "gallery": await in_worker(_gallery_readable, resources),
        # A key store gone bad after start would refuse every stored key: not ready.
        "keys": await in_worker(resources.authenticator.store_ready),
    }


async def render_metrics(resources: ServiceResources) -> bytes:
    """The Prometheus text exposition, gallery sizes read now (rendered off the event loop)."""
    sizes = await in_worker(resources.gallery.sizes)
    return await in_worker(resources.metrics.render, sizes)
