"""/docs and /redoc work offline: every asset they reference is served by the app itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import running_app

PAGES = ("/docs", "/redoc")
# Anything that would make the browser go to another host: absolute or protocol-relative URLs.
EXTERNAL_URL = re.compile(r"""(?:https?:)?//[\w.-]+\.[a-z]{2,}""", re.IGNORECASE)


class _References(HTMLParser):
    """Every src/href attribute of a page (script, link, img, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in {"src", "href"} and value]


def _references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    return parser.urls


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, default_pack_dir: Path) -> Iterator[TestClient]:
    with running_app(tmp_path_factory.mktemp("data"), default_pack_dir) as app_client:
        yield app_client


@pytest.mark.parametrize("page", PAGES)
def test_docs_page_names_no_external_url(client: TestClient, page: str) -> None:
    response = client.get(page)  # public, like the API description itself
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert EXTERNAL_URL.findall(response.text) == []
    assert "fonts.googleapis" not in response.text
    assert "/openapi.json" in response.text


@pytest.mark.parametrize("page", PAGES)
def test_every_asset_a_docs_page_references_is_served(client: TestClient, page: str) -> None:
    html = client.get(page).text
    references = _references(html) + re.findall(r"""url:\s*['"]([^'"]+)['"]""", html)
    assert len(references) >= 2  # script + favicon at least (swagger: css too)
    for url in references:
        assert url.startswith("/"), url
        response = client.get(url)
        assert response.status_code == 200, url
        assert len(response.content) > 0, url


@pytest.mark.parametrize("name", ["swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"])
def test_assets_are_the_real_bundles(client: TestClient, name: str) -> None:
    response = client.get(f"/docs-assets/{name}")
    assert response.status_code == 200
    assert len(response.content) > 100_000  # the minified bundles, not a stub
    expected_type = "text/css" if name.endswith(".css") else "javascript"
    assert expected_type in response.headers["content-type"]


@pytest.mark.parametrize(
    "path",
    [
        "/docs-assets/",
        "/docs-assets/missing.js",
        "/docs-assets/../service/settings.py",
        "/docs-assets/%2e%2e/%2e%2e/pyproject.toml",
        "/docs-assets/..%2fconsts.py",
        "/docs-assets/__init__.py",
    ],
)
def test_asset_folder_serves_nothing_else(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404
