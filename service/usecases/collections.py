"""The service's collections: each one's pack, default threshold and gallery size."""

from __future__ import annotations

from dataclasses import dataclass

from service.auth.authenticator import Principal
from service.gallery.store import GalleryCounts
from service.settings import DEFAULT_COLLECTION
from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker
from service.usecases.thresholds import ResolvedThreshold


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    pack_id: str
    embedding_size: int
    threshold: ResolvedThreshold  # its pack's FACE_THRESHOLD
    gallery: GalleryCounts


def collections_of(resources: ServiceResources) -> list[ServiceResources]:
    """Every collection's resources: the default one first, then by name."""
    table = dict(resources.collections) or {resources.collection: resources}
    return [table[name] for name in sorted(table, key=lambda name: (name != DEFAULT_COLLECTION, name))]


async def list_collections(resources: ServiceResources, caller: Principal) -> list[CollectionInfo]:
    """The collections ``caller``'s key may use (a key limited to some learns nothing of the others)."""
    return [
        CollectionInfo(
            name=collection.collection,
            pack_id=collection.pack.manifest.id,
            embedding_size=collection.pack.manifest.embedding_size,
            threshold=collection.thresholds.default,
            gallery=await in_worker(collection.gallery.counts),
        )
        for collection in collections_of(resources)
        if caller.may_use(collection.collection)
    ]
