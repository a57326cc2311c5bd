"""The service's assembled resources (pack, pipeline, gallery, auth, ...) and how they are built.

Built once, in order, failing with clear, typed errors: by the API's lifespan (tests,
``create_app(settings)``) and by ``face-service serve``, which builds first so that a bad pack, a
gallery pinned to another pack or a missing GPU ends the process with a one-line message and exit
status 1 instead of a server traceback. Every use case reads them; none is a module global.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from pydantic import SecretStr

from service.auth.authenticator import Authenticator, bootstrap_authenticator
from service.auth.keys import KeyStoreCorruptError
from service.command_hints import command_hint
from service.gallery.gallery import Gallery
from service.gallery.store import GalleryError, PackMismatchError
from service.packs.files import PackError
from service.packs.loader import (
    LoadedPack,
    folders_holding_pack,
    load_pack,
    pack_mismatch_advice,
    resolve_pack_dir,
)
from service.pipeline.face_pipeline import FacePipeline
from service.pipeline.pixel_budget import PixelBudget
from service.pipeline.quality import QualityBars
from service.pipeline.runtime import RuntimeUnavailableError
from service.postgres.migrations import SchemaTooNewError
from service.postgres.pool import DatabaseUnavailableError
from service.postgres.schemas import create_schema, url_in_schema
from service.private_files import ensure_private_dir
from service.settings import DEFAULT_COLLECTION, Settings
from service.usecases.errors import CollectionNotFoundError
from service.usecases.metrics import ServiceMetrics
from service.usecases.thresholds import ThresholdError, ThresholdPolicy

# Errors that mean "this configuration cannot start": reported as one message, exit status 1.
STARTUP_ERRORS: tuple[type[Exception], ...] = (
    PackError,
    ThresholdError,
    RuntimeUnavailableError,
    GalleryError,
    KeyStoreCorruptError,
    DatabaseUnavailableError,
    SchemaTooNewError,
)


@dataclass(frozen=True)
class ServiceResources:
    """What one collection's use cases run with. The default collection's (FACE_PACK) is the one the
    lifespan holds; each declared collection is a view of it with its own pack, pipeline, gallery,
    thresholds and settings (``collection_settings``: its pack, data dir or schema; every other knob
    the same), sharing the rest (key store, metrics, pixel budget, quality bars)."""

    settings: Settings
    pack: LoadedPack
    pipeline: FacePipeline
    gallery: Gallery
    authenticator: Authenticator
    metrics: ServiceMetrics
    thresholds: ThresholdPolicy
    quality_bars: QualityBars
    pixel_budget: PixelBudget  # decoded pixels in flight across requests (service.usecases.images)
    collection: str = DEFAULT_COLLECTION
    # Every collection by name, the default included; one mapping shared by all the views.
    collections: Mapping[str, ServiceResources] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )

    def in_collection(self, name: str) -> ServiceResources:
        """The resources of collection ``name`` (CollectionNotFoundError when none is declared so)."""
        found = self.collections.get(name)
        if found is None:
            if name == self.collection:  # built without a collections table (tests, tools)
                return self
            raise CollectionNotFoundError(name)
        return found

    @property
    def pipelines(self) -> list[FacePipeline]:
        """Each distinct pipeline once (collections on one pack share theirs): what the lifespan starts."""
        return list({id(r.pipeline): r.pipeline for r in (self, *self.collections.values())}.values())

    def close(self) -> None:
        """Close what holds files, threads or database connections: every gallery and the key store."""
        try:
            _close_galleries([self.gallery, *(r.gallery for r in self.collections.values())])
        finally:
            self.authenticator.close()


def _close_galleries(galleries: list[Gallery]) -> None:
    """Close each distinct gallery once; one that fails to close does not keep the others open."""
    with ExitStack() as closing:
        for gallery in {id(gallery): gallery for gallery in galleries}.values():
            closing.callback(gallery.close)


def build_resources(settings: Settings, metrics: ServiceMetrics | None = None) -> ServiceResources:
    """Load the packs, create the runtime sessions, open the galleries, set up auth (blocking)."""
    metrics = metrics or ServiceMetrics()
    pack = load_pack(resolve_pack_dir(settings.models_dir, settings.pack))
    thresholds = ThresholdPolicy(pack.manifest.calibration, settings.threshold)
    pipeline = FacePipeline.from_pack(pack, settings, on_batch=metrics.observe_batch)
    gallery = _open_gallery(settings, pipeline)
    try:
        authenticator = bootstrap_authenticator(settings)
    except BaseException:
        gallery.close()
        raise
    table: dict[str, ServiceResources] = {}
    base = ServiceResources(
        settings=settings,
        pack=pack,
        pipeline=pipeline,
        gallery=gallery,
        authenticator=authenticator,
        metrics=metrics,
        thresholds=thresholds,
        quality_bars=QualityBars.from_settings(settings),
        pixel_budget=PixelBudget(settings.decode_pixel_budget, settings.decode_budget_wait_s),
        collections=MappingProxyType(table),  # a live view: filled below
    )
    table[DEFAULT_COLLECTION] = base
    try:
        pipelines = {settings.pack: (pack, pipeline)}
        for name, pack_name in settings.collections.items():
            table[name] = _collection_resources(base, name, pack_name, pipelines)
    except BaseException:
        base.close()
        raise
    return base


def _collection_resources(
    base: ServiceResources,
    name: str,
    pack_name: str,
    pipelines: dict[str, tuple[LoadedPack, FacePipeline]],
) -> ServiceResources:
    """Collection ``name``'s view of ``base``: its pack (one pipeline per pack folder) and gallery."""
    try:
        settings = collection_settings(base.settings, name, pack_name)
        if base.settings.database_url is not None:
            url = base.settings.database_url.get_secret_value()
            create_schema(url, collection_schema(name), timeout_s=settings.db_timeout_s)
        else:
            ensure_private_dir(settings.data_dir.parent)  # <data_dir>/collections/
        if pack_name not in pipelines:
            pack = load_pack(resolve_pack_dir(settings.models_dir, pack_name))
            pipelines[pack_name] = (
                pack,
                FacePipeline.from_pack(pack, settings, on_batch=base.metrics.observe_batch),
            )
        pack, pipeline = pipelines[pack_name]
        thresholds = ThresholdPolicy(pack.manifest.calibration, settings.threshold)
        gallery = _open_gallery(settings, pipeline, name)
    except STARTUP_ERRORS as error:  # the same error, saying which collection cannot start
        error.args = (f"collection {name!r} (pack {pack_name!r}): {error}", *error.args[1:])
        raise
    return replace(
        base, pack=pack, pipeline=pipeline, gallery=gallery, thresholds=thresholds, collection=name
    )


def collection_schema(name: str) -> str:
    """The PostgreSQL schema of collection ``name``'s gallery (the default one lives in ``public``)."""
    return f"collection_{name}"


def collection_settings(settings: Settings, name: str, pack_name: str) -> Settings:
    """``settings`` as collection ``name``'s gallery opens with them: its pack; its own data dir
    (SQLite: ``<data_dir>/collections/<name>/``) or its own schema of the shared database."""
    update: dict[str, object] = {"pack": pack_name, "data_dir": settings.data_dir / "collections" / name}
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        update["database_url"] = SecretStr(url_in_schema(url, collection_schema(name)))
    return settings.model_copy(update=update)


def _open_gallery(
    settings: Settings, pipeline: FacePipeline, collection: str = DEFAULT_COLLECTION
) -> Gallery:
    try:
        return Gallery.open(settings.data_dir, pipeline.pack_id, pipeline.embedding_size, settings)
    except PackMismatchError as mismatch:  # the advice names folders, as FACE_PACK and --pack take them
        if collection != DEFAULT_COLLECTION:
            raise mismatch.with_advice(_collection_mismatch_advice(settings, collection, mismatch)) from None
        raise mismatch.with_advice(
            pack_mismatch_advice(
                data_dir=settings.data_dir,
                models_dir=settings.models_dir,
                running_pack=settings.pack,
                gallery_pack_id=mismatch.gallery_pack,
            )
        ) from None


def _collection_mismatch_advice(settings: Settings, collection: str, mismatch: PackMismatchError) -> str:
    """A collection's ways out: re-embed its gallery, or declare it on its gallery's pack again."""
    reembed = command_hint(
        "face-service",
        "reembed",
        "--collection",
        collection,
        data_dir=settings.data_dir.parent.parent,  # the service's FACE_DATA_DIR, not the collection's
        models_dir=settings.models_dir,
    )
    advice = f"stop the service and re-embed the collection's stored crops with this pack: `{reembed}`"
    holders = folders_holding_pack(settings.models_dir, mismatch.gallery_pack)
    where = (
        f"FACE_COLLECTIONS naming {{{json.dumps(collection)}: {json.dumps(holders[0])}}}"
        if holders
        else f"FACE_COLLECTIONS naming a folder of {settings.models_dir} that holds {mismatch.gallery_pack!r}"
    )
    return f"{advice}; or keep using the gallery's pack: {where}"
