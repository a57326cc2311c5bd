"""The app factory: ``create_app(settings)``; everything stateful is built and torn down by the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.api.auth_middleware import CredentialsInUrlMiddleware, EarlyAuthMiddleware
from service.api.deps import HTTP_METRICS_STATE, RESOURCES_STATE
from service.api.docs_assets import install_offline_docs
from service.api.domain_errors import install_domain_error_handlers
from service.api.errors import install_error_handlers
from service.api.metrics import HttpMetrics, MetricsMiddleware
from service.api.middleware import BodySizeLimitMiddleware, RequestIdMiddleware, UnhandledErrorMiddleware
from service.api.openapi import install_problem_openapi
from service.api.routes import detect, embed, faces, health, identify, info, keys, subjects, verify
from service.api.routes import gallery as gallery_routes
from service.api.routes.collections import COLLECTION_NOT_FOUND, COLLECTION_PREFIX, collection_path
from service.api.routes.collections import router as collections_router
from service.api.routes.ui import install_console
from service.settings import DEFAULT_COLLECTION, Settings, load_settings
from service.usecases.metrics import ServiceMetrics
from service.usecases.resources import ServiceResources, build_resources
from service.usecases.threads import in_worker

logger = logging.getLogger(__name__)

API_TITLE = "face-service"
API_VERSION = "1"

_ROUTERS = (health.router, info.router, collections_router, keys.router)
# One collection's gallery and pack: under /v1 (the default collection) and COLLECTION_PREFIX.
_COLLECTION_ROUTERS = (
    detect.router,
    embed.router,
    verify.router,
    identify.router,
    subjects.router,
    faces.router,
    gallery_routes.router,
)


def create_app(settings: Settings | None = None, *, resources: ServiceResources | None = None) -> FastAPI:
    """A new app. ``resources`` are prebuilt ones (the CLI builds them first to fail fast with a clear
    message); without them the lifespan builds them from ``settings``. Either way the lifespan owns
    them: it starts the embedding batcher and closes the gallery at shutdown.
    """
    settings = resources.settings if resources is not None else (settings or load_settings())
    service_metrics = resources.metrics if resources is not None else ServiceMetrics()
    http_metrics = HttpMetrics(service_metrics.registry)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        ready = (
            resources
            if resources is not None
            else await in_worker(build_resources, settings, service_metrics)
        )
        try:
            async with AsyncExitStack() as pipelines:
                for pipeline in ready.pipelines:  # each collection's pack's batcher (shared ones once)
                    await pipelines.enter_async_context(pipeline)
                logger.info(
                    "ready: pack %s, providers %s, gallery %s faces",
                    ready.pack.manifest.id,
                    ready.pipeline.providers,
                    ready.gallery.counts().faces,
                )
                for name, collection in ready.collections.items():
                    if name != DEFAULT_COLLECTION:
                        logger.info(
                            "collection %s: pack %s, gallery %s faces",
                            name,
                            collection.pack.manifest.id,
                            collection.gallery.counts().faces,
                        )
                yield {RESOURCES_STATE: ready, HTTP_METRICS_STATE: http_metrics}
        finally:
            ready.close()

    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        description="Face detection, verification and identification. Errors are RFC 7807 problem details.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_domain_error_handlers(app)
    for router in _ROUTERS:
        app.include_router(router)
    for router in _COLLECTION_ROUTERS:
        app.include_router(router, prefix="/v1")
    for router in _COLLECTION_ROUTERS:
        app.include_router(
            router,
            prefix=COLLECTION_PREFIX,
            dependencies=[Depends(collection_path)],
            responses=COLLECTION_NOT_FOUND,
        )
    install_problem_openapi(app)
    install_offline_docs(app)
    install_console(app)

    # Added last = outermost: the request id wraps everything, so every response (413s included) has it.
    # Inside out: a body is refused without a valid key before it is read; a key in the URL is refused
    # before that (400, not 401); sizes are checked first of all from Content-Length; unexpected
    # exceptions become a 500 that keeps the connection (metrics count it as a 500).
    app.add_middleware(EarlyAuthMiddleware, metrics=http_metrics)
    app.add_middleware(CredentialsInUrlMiddleware)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        path_limits=dict.fromkeys(_import_paths(settings), settings.max_import_bytes),
    )
    app.add_middleware(MetricsMiddleware, metrics=http_metrics)
    app.add_middleware(UnhandledErrorMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(RequestIdMiddleware)
    return app


def _import_paths(settings: Settings) -> list[str]:
    """Every collection's archive upload path (its body limit is FACE_MAX_IMPORT_BYTES)."""
    names = [DEFAULT_COLLECTION, *settings.collections]
    return [
        gallery_routes.IMPORT_PATH,
        *(COLLECTION_PREFIX.format(collection=name) + "/gallery/import" for name in names),
    ]
