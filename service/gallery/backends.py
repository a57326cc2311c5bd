"""The one place that chooses the gallery's storage backend: a table from name to opener.

Adding a backend is one module with a ``StoreOpener`` (and its settings) plus one row here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from service.gallery.postgres_store import open_postgres_store
from service.gallery.sqlite_store import open_sqlite_store
from service.gallery.store import GalleryError, OpenedStore, StoreOptions
from service.settings import SearchBackend

if TYPE_CHECKING:
    from service.settings import Settings


class StoreOpener(Protocol):
    """Opens (or creates, unless ``must_exist``) the gallery of ``data_dir``, taking its lock."""

    def __call__(self, data_dir: Path, options: StoreOptions, *, must_exist: bool = False) -> OpenedStore: ...


class UnknownBackendError(GalleryError, ValueError):
    """The configured gallery backend is not one this service has."""


STORE_BACKENDS: Mapping[str, StoreOpener] = MappingProxyType(
    {"sqlite": open_sqlite_store, "postgresql": open_postgres_store}
)


def store_options(settings: Settings) -> StoreOptions:
    """The backend ``settings`` ask for: PostgreSQL when FACE_DATABASE_URL is set, else SQLite."""
    if settings.database_url is None:
        return StoreOptions()
    return StoreOptions(
        backend="postgresql",
        database_url=settings.database_url.get_secret_value(),
        pool_min_size=settings.db_pool_min_size,
        pool_max_size=settings.db_pool_max_size,
        timeout_s=settings.db_timeout_s,
        vector_index=settings.search is SearchBackend.PGVECTOR,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construction=settings.hnsw_ef_construction,
        ef_search=settings.hnsw_ef_search,
    )


def open_store(data_dir: Path, options: StoreOptions, *, must_exist: bool = False) -> OpenedStore:
    """Open the gallery of ``data_dir`` with the backend ``options`` name."""
    opener = STORE_BACKENDS.get(options.backend)
    if opener is None:
        known = ", ".join(sorted(STORE_BACKENDS))
        raise UnknownBackendError(f"unknown gallery backend {options.backend!r}; known backends: {known}")
    return opener(data_dir, options, must_exist=must_exist)
