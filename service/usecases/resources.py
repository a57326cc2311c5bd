"""The service's assembled resources (pack, pipeline, gallery, auth, ...) and how they are built.

Built once, in order, failing with clear, typed errors: by the API's lifespan (tests,
``create_app(settings)``) and by ``face-service serve``, which builds first so that a bad pack, a
gallery pinned to another pack or a missing GPU ends the process with a one-line message and exit
status 1 instead of a server traceback. Every use case reads them; none is a module global.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.auth.authenticator import Authenticator, bootstrap_authenticator
from service.auth.keys import KeyStoreCorruptError
from service.gallery.gallery import Gallery
from service.gallery.store import GalleryError, PackMismatchError
from service.packs.files import PackError
from service.packs.loader import LoadedPack, load_pack, pack_mismatch_advice, resolve_pack_dir
from service.pipeline.face_pipeline import FacePipeline
from service.pipeline.pixel_budget import PixelBudget
from service.pipeline.quality import QualityBars
from service.pipeline.runtime import RuntimeUnavailableError
from service.postgres.migrations import SchemaTooNewError
from service.postgres.pool import DatabaseUnavailableError
from service.settings import Settings
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
    settings: Settings
    pack: LoadedPack
    pipeline: FacePipeline
    gallery: Gallery
    authenticator: Authenticator
    metrics: ServiceMetrics
    thresholds: ThresholdPolicy
    quality_bars: QualityBars
    pixel_budget: PixelBudget  # decoded pixels in flight across requests (service.usecases.images)

    def close(self) -> None:
        """Close what holds files, threads or database connections: the gallery and the key store."""
        try:
            self.gallery.close()
        finally:
            self.authenticator.close()


def build_resources(settings: Settings, metrics: ServiceMetrics | None = None) -> ServiceResources:
    """Load the pack, create the runtime sessions, open the gallery, set up auth (blocking)."""
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
    return ServiceResources(
        settings=settings,
        pack=pack,
        pipeline=pipeline,
        gallery=gallery,
        authenticator=authenticator,
        metrics=metrics,
        thresholds=thresholds,
        quality_bars=QualityBars.from_settings(settings),
        pixel_budget=PixelBudget(settings.decode_pixel_budget, settings.decode_budget_wait_s),
    )


def _open_gallery(settings: Settings, pipeline: FacePipeline) -> Gallery:
    try:
        return Gallery.open(settings.data_dir, pipeline.pack_id, pipeline.embedding_size, settings)
    except PackMismatchError as mismatch:  # the advice names folders, as FACE_PACK and --pack take them
        raise mismatch.with_advice(
            pack_mismatch_advice(
                data_dir=settings.data_dir,
                models_dir=settings.models_dir,
                running_pack=settings.pack,
                gallery_pack_id=mismatch.gallery_pack,
            )
        ) from None
