"""``/ui/``: the web console, static files served by the service itself (no CDN, works offline).

The files (``service/api/ui/static``) hold no data and need no key: the console asks for the key and
sends it on each API call, like any other client. Every answer carries a strict Content-Security-Policy:
scripts, styles and requests only to this origin; images also from ``blob:``/``data:`` (the photos
a user picks and the crops the API returns, shown without leaving the page).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

UI_PATH = "/ui"
STATIC_DIR = Path(__file__).resolve().parents[1] / "ui" / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob: mediastream:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The webcam (identify) is the only device the console may ask for.
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=()",
    # Revalidated on each load: a service upgrade is seen without a stale script.
    "Cache-Control": "no-cache",
}


class ConsoleFiles(StaticFiles):
    """StaticFiles whose every file answer carries the console's security headers (a 404 is a problem)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def install_console(app: FastAPI) -> None:
    """Serve the console under ``/ui/``; ``/ui`` redirects there (relative links need the slash)."""
    if not (STATIC_DIR / "index.html").is_file():  # a broken install: fail at start, not on first visit
        raise RuntimeError(f"the web console's files are missing from {STATIC_DIR}")

    async def to_console() -> RedirectResponse:
        return RedirectResponse(f"{UI_PATH}/", status_code=308)

    app.add_api_route(UI_PATH, to_console, methods=["GET"], include_in_schema=False)
    app.mount(UI_PATH, ConsoleFiles(directory=STATIC_DIR, html=True), name="ui")
