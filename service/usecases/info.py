"""What the service runs with: pack, providers, thresholds, the gallery's size and index kind."""

from __future__ import annotations

from dataclasses import dataclass

from service.gallery.gallery import ReplicationStatus
from service.gallery.store import GalleryCounts
from service.packs.manifest import PackManifest
from service.usecases.collections import collections_of
from service.usecases.health import replication_status
from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker
from service.usecases.thresholds import ResolvedThreshold


@dataclass(frozen=True)
class ServiceInfo:
    manifest: PackManifest
    providers: dict[str, list[str]]
    threshold: ResolvedThreshold  # the default (FACE_THRESHOLD)
    subject_score: str
    gallery: GalleryCounts
    index_kind: str
    backend: str  # sqlite | postgresql
    replication: ReplicationStatus | None
    auth_enabled: bool
    collections: dict[str, str]  # every collection's name -> pack id, the default one first


async def service_info(resources: ServiceResources) -> ServiceInfo:
    return ServiceInfo(
        manifest=resources.pack.manifest,
        providers=resources.pipeline.providers,
        threshold=resources.thresholds.default,
        subject_score=resources.settings.subject_score.value,
        gallery=await in_worker(resources.gallery.counts),
        index_kind=str(resources.gallery.index_kind),
        backend="postgresql" if resources.settings.shared_gallery else "sqlite",
        replication=await in_worker(replication_status, resources),
        auth_enabled=resources.authenticator.enabled,
        collections={c.collection: c.pack.manifest.id for c in collections_of(resources)},
    )
