"""Readiness checks and the metrics exposition: what a probe or a scraper asks the service."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from service.gallery.gallery import ReplicationStatus
from service.usecases.collections import collections_of
from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker

# Every check fails before the resources exist (start-up not finished) or after shutdown.
NOT_LOADED: dict[str, bool] = {"models": False, "gallery": False, "keys": False}


@dataclass(frozen=True)
class Readiness:
    checks: dict[str, bool] = field(default_factory=lambda: dict(NOT_LOADED))
    # A replica of a shared gallery: where it stands in the change feed (None otherwise, or unknown).
    replication: ReplicationStatus | None = None

    @property
    def ready(self) -> bool:
        return all(self.checks.values())


def _gallery_readable(resources: ServiceResources) -> bool:
    try:
        resources.gallery.counts()
    except Exception:  # any failure to read the store means "not ready", never an error from a probe
        return False
    return True


def replication_status(resources: ServiceResources) -> ReplicationStatus | None:
    """The replica's applied change and lag; None without a shared gallery or while it is unreachable."""
    try:
        return resources.gallery.replication()
    except Exception:  # the database is down: the "gallery" check already says not ready
        return None


def _caught_up(resources: ServiceResources, status: ReplicationStatus | None) -> bool:
    return status is not None and status.following and status.lag_s <= resources.settings.replica_max_lag_s


async def _collection_readiness(resources: ServiceResources) -> Readiness:
    """One collection's checks (the key store is the service's: it is checked with each)."""
    # Together, not one after another: with the database down each waits out FACE_DB_TIMEOUT_S.
    gallery_ok, keys_ok = await asyncio.gather(
        in_worker(_gallery_readable, resources),
        # A key store gone bad after start would refuse every stored key: not ready.
        in_worker(resources.authenticator.store_ready),
    )
    checks = {"models": bool(resources.pipeline.providers), "gallery": gallery_ok, "keys": keys_ok}
    if not resources.settings.shared_gallery:
        return Readiness(checks)
    if not gallery_ok:  # the database is unreachable: no need to wait for it once more
        checks["replica"] = False
        return Readiness(checks)
    status = await in_worker(replication_status, resources)
    # pgvector search has no local index to lag: replication() is None there, and nothing to check.
    if status is not None or resources.gallery.follows_feed:
        checks["replica"] = _caught_up(resources, status)
    return Readiness(checks, status)


async def readiness(resources: ServiceResources | None) -> Readiness:
    """Each check by name: models loaded, gallery readable, key store readable, replica caught up; and
    for every other collection ``gallery:<name>`` (and ``replica:<name>``). ``replication``: the
    default collection's."""
    if resources is None:
        return Readiness()
    others = [c for c in resources.collections.values() if c.gallery is not resources.gallery]
    default, *theirs = await asyncio.gather(
        _collection_readiness(resources), *(_collection_readiness(c) for c in others)
    )
    checks = dict(default.checks)
    for collection, state in zip(others, theirs, strict=True):
        for name in ("gallery", "replica"):
            if name in state.checks:
                checks[f"{name}:{collection.collection}"] = state.checks[name]
    return Readiness(checks, default.replication)


async def render_metrics(resources: ServiceResources) -> bytes:
    """The Prometheus text exposition, every collection's gallery sizes read now (off the event loop)."""
    sizes = {c.collection: await in_worker(c.gallery.sizes) for c in collections_of(resources)}
    return await in_worker(resources.metrics.render, sizes)
