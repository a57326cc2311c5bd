"""The console's static files as the service serves them (no browser): unauthenticated, with a strict
CSP, nothing loaded from elsewhere, and every file packaged."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.routes.ui import CONTENT_SECURITY_POLICY, STATIC_DIR
from tests.api.conftest import api_settings
from tests.conftest import REPO_ROOT

STATIC_FILES = sorted(path.name for path in STATIC_DIR.iterdir())


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, default_pack_dir: Path) -> TestClient:
    """The app without its lifespan: static files need no model, gallery or key store."""
    settings = api_settings(tmp_path_factory.mktemp("console-files"), default_pack_dir)
    return TestClient(create_app(settings))


def test_ui_redirects_to_the_console_which_needs_no_key(client: TestClient) -> None:
    redirect = client.get("/ui", follow_redirects=False)
    assert (redirect.status_code, redirect.headers["location"]) == (308, "/ui/")
    page = client.get("/ui/")  # no key: the page holds no data, every API call it makes needs one
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="app.js">' in page.text


@pytest.mark.parametrize("name", STATIC_FILES)
def test_every_file_has_the_strict_policy_and_loads_nothing_from_elsewhere(
    client: TestClient, name: str
) -> None:
    response = client.get(f"/ui/{name}")
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    # No CDN, font or analytics host: any absolute URL would be a request leaving this service.
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", response.text, re.IGNORECASE), name
    if name.endswith(".js"):
        assert response.headers["content-type"].startswith(("text/javascript", "application/javascript"))
        assert "innerHTML" not in response.text  # names and metadata go in as text, never as markup
        for imported in re.findall(r'from "\./([^"]+)"', response.text):
            assert imported in STATIC_FILES, (name, imported)


def test_the_policy_allows_only_this_origin() -> None:
    directives = dict(part.split(" ", 1) for part in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert directives["img-src"] == "'self' blob: data:"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"


def test_index_references_only_files_that_exist(client: TestClient) -> None:
    page = client.get("/ui/").text
    referenced = re.findall(r'(?:src|href)="([^"#:]+)"', page)
    assert {"app.js", "style.css"} <= set(referenced)
    for name in referenced:
        assert client.get(f"/ui/{name}").status_code == 200, name
    missing = client.get("/ui/no-such-file.js")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


def test_every_static_file_is_package_data() -> None:
    """An installed (non-editable) service must carry the console: pyproject's package-data globs."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["service.api"]
    package_dir = REPO_ROOT / "service" / "api"
    for path in STATIC_DIR.iterdir():
        relative = path.relative_to(package_dir).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative
