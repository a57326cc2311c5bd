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
TIMEOUT_MS = 20_000  # two shared CPU cores: enrollment of a few photos takes seconds


def chromium_path() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def serve_console(base: Path, pack_dir: Path, **env: str) -> Iterator[LocalServer]:
    """``face-service serve`` on a fresh data dir under ``base`` with an admin key (FACE_API_KEY)."""
    env = {"FACE_MODELS_DIR": str(pack_dir.parent), "FACE_PACK": pack_dir.name, **env}
    server = LocalServer(base / "data", env=env, log_path=base / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory, default_pack_dir: Path) -> Iterator[LocalServer]:
    yield from serve_console(tmp_path_factory.mktemp("console"), default_pack_dir)


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


@pytest.fixture
def page(browser: Any, console_server: LocalServer) -> Iterator[Any]:
    """A fresh tab (fresh sessionStorage) that accepts confirm() dialogs and fails on page errors."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    # A CSP violation, a script error or a missing file shows up here: the console must run clean
    # under its policy. (A 422 the tests provoke is logged by chromium too; the page shows its reasons.)
    expected = "the server responded with a status of 422"

    def on_console(message: Any) -> None:
        if message.type == "error" and expected not in message.text:
            problems.append(message.text)

    tab.on("console", on_console)
    tab.on("pageerror", lambda error: problems.append(str(error)))
    tab.on("dialog", lambda dialog: dialog.accept())
    yield tab
    context.close()
    assert problems == [], problems


def sign_in(page: Any, server: LocalServer, key: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{server.base_url}/ui")  # the redirect to /ui/ is followed
    assert page.url == f"{server.base_url}/ui/"
    page.fill("#api-key", key)
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#who")).to_be_visible()
    expect(page.locator("#view-subjects")).to_be_visible()
