"""Fixtures for the web console's tests: the real service as a child process, Debian's chromium driven
by Playwright (never Playwright's own browser downloads), photos from ../shared."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.local_server import LocalServer

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")


def chromium_path() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory, default_pack_dir: Path) -> Iterator[LocalServer]:
    """``face-service serve`` on a fresh data dir with an admin key (FACE_API_KEY)."""
    base = tmp_path_factory.mktemp("console")
    env = {"FACE_MODELS_DIR": str(default_pack_dir.parent), "FACE_PACK": default_pack_dir.name}
    server = LocalServer(base / "data", env=env, log_path=base / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def read_only_key(console_server: LocalServer) -> str:
    created = httpx.post(
        f"{console_server.base_url}/v1/keys",
        json={"name": "viewer", "scopes": ["read"]},
        headers=console_server.headers,
    )
    created.raise_for_status()
    return str(created.json()["key"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium; the tests skip (saying why) without it or without Playwright."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (it is in the dev extra)"
    )
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium not found: run `make browser-deps` (Debian's chromium package)")
    with sync_api.sync_playwright() as playwright:
        # A fake webcam (a test pattern, no face) granted without a prompt: the getUserMedia path runs.
        fake_camera = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=fake_camera)
        try:
            yield launched
        finally:
            launched.close()
