"""GET /v1/collections, and the ``{collection}`` path segment the gallery routes are mounted under.

The gallery-scoped routers (inference, subjects, faces, archives) are included twice by the app:
under ``/v1`` (the default collection) and under ``COLLECTION_PREFIX`` (any declared one, ``default``
included). ``get_resources`` (service/api/deps.py) picks the collection's resources from the path.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from service.api.deps import ServiceReadAccess, ServiceResourcesDep
from service.api.presenters import collection_list
from service.api.responses import AUTH_ERRORS
from service.api.schemas import CollectionList, Problem
from service.settings import COLLECTION_NAME_PATTERN
from service.usecases.collections import list_collections

COLLECTION_PREFIX = "/v1/collections/{collection}"

# Documented on every operation under COLLECTION_PREFIX (a route's own 404 description wins).
COLLECTION_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {
        "model": Problem,
        "description": "no collection of this name (`collection_not_found`), or no such item",
    }
}


def collection_path(
    collection: Annotated[
        str,
        Path(
            pattern=COLLECTION_NAME_PATTERN,
            description='a collection FACE_COLLECTIONS declares, or "default" (the /v1/... routes\' gallery)',
        ),
    ],
) -> str:
    """Declares ``{collection}`` (OpenAPI, validation); the resources are picked by get_resources."""
    return collection


router = APIRouter(prefix="/v1", tags=["service"], responses=AUTH_ERRORS)


@router.get(
    "/collections",
    summary="The collections: each one's pack, default threshold and gallery size",
    description="Only those the key may use: a key limited to collections sees just those.",
)
async def collections(resources: ServiceResourcesDep, caller: ServiceReadAccess) -> CollectionList:
    return collection_list(await list_collections(resources, caller))
