"""``/docs`` (Swagger UI) and ``/redoc`` served from local files: no request leaves the machine.

FastAPI's own pages load their JavaScript, CSS, favicon (and ReDoc's Google fonts) from CDNs, so
they are blank on an offline host. The assets come from the ``fastapi-offline`` wheel (a packaged
copy of swagger-ui-dist 5 and redoc 2) and are mounted under ``DOCS_ASSETS_PATH``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute, Route

DOCS_ASSETS_PATH = "/docs-assets"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"
DOCS_PAGES = ("/docs", "/redoc")


def docs_assets_dir() -> Path:
    """The wheel's folder of swagger-ui / redoc files (checked at start: a missing file fails loudly)."""
    import fastapi_offline

    folder = Path(fastapi_offline.__file__).resolve().parent / "static"
    missing = [name for name in (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON) if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-offline's docs assets are incomplete: {missing} missing in {folder}")
    return folder


def _asset(name: str) -> str:
    return f"{DOCS_ASSETS_PATH}/{name}"


def install_offline_docs(app: FastAPI) -> None:
    """Replace FastAPI's CDN-backed ``/docs`` and ``/redoc`` with pages that use local assets."""
    app.router.routes[:] = [route for route in app.router.routes if not _is_docs_page(route)]
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=docs_assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=_asset(SWAGGER_JS),
            swagger_css_url=_asset(SWAGGER_CSS),
            swagger_favicon_url=_asset(FAVICON),
            # Swagger UI's default validator badge calls validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=_asset(REDOC_JS),
            redoc_favicon_url=_asset(FAVICON),
            with_google_fonts=False,
        )

    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)


def _is_docs_page(route: BaseRoute) -> bool:
    return isinstance(route, Route) and route.path in DOCS_PAGES
