"""The console with collections: the service runs with a second collection, ``kiosk``, on the default
pack folder. An admin picks kiosk, enrolls and identifies there, and the default gallery does not
know that subject; a key limited to kiosk signs in straight into kiosk with no picker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.local_server import LocalServer
from tests.ui.conftest import serve_console, sign_in

PERSON = "John_Simm"


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory, default_pack_dir: Path) -> Iterator[LocalServer]:
    """The conftest's server (its name overrides it for this module's ``page``), plus ``kiosk``."""
    yield from serve_console(
        tmp_path_factory.mktemp("console-collections"),
        default_pack_dir,
        FACE_COLLECTIONS=json.dumps({"kiosk": default_pack_dir.name}),
    )


@pytest.fixture(scope="module")
def photos(shared_faces: Path) -> list[Path]:
    files = sorted((shared_faces / "dlib_johns" / PERSON).glob("*.jpg"))
    assert len(files) == 11, f"expected 11 photos of {PERSON}, found {len(files)}"
    return files


def _identify(page: Any, photo: Path) -> Any:
    page.click("#nav a[href='#/identify']")
    page.set_input_files("#identify-file", str(photo))
    page.click("#identify-form button[type=submit]")
    return page.locator("#identify-result .box span")


def test_an_admin_enrolls_in_kiosk_and_the_default_gallery_does_not_know_him(
    page: Any, console_server: LocalServer, photos: list[Path]
) -> None:
    from playwright.sync_api import expect

    listing = httpx.get(f"{console_server.base_url}/v1/collections", headers=console_server.headers)
    listing.raise_for_status()
    packs = {c["name"]: c["pack_id"] for c in listing.json()["collections"]}
    assert list(packs) == ["default", "kiosk"]

    sign_in(page, console_server, console_server.api_key)
    expect(page.locator("#who-name")).to_have_text("FACE_API_KEY (admin)")  # unlimited: no list
    picker = page.locator("#collection")
    expect(picker).to_be_visible()
    expect(picker.locator("option")).to_have_text(["default", "kiosk"])
    expect(picker).to_have_value("default")
    picker.select_option("kiosk")
    expect(page.locator("#collection-pack")).to_have_text(f"pack {packs['kiosk']}")
    page.reload()  # the choice is the tab's (sessionStorage)
    expect(page.locator("#collection")).to_have_value("kiosk")

    page.fill("#create-name", "Kiosk Visitor")
    page.click("#create-subject")
    expect(page.locator("#subject-name")).to_have_text("Kiosk Visitor")
    page.set_input_files("#enroll-files", [str(path) for path in photos[:2]])
    page.click("#enroll-button")
    expect(page.locator("#enroll-results li.accepted")).to_have_count(2)
    expect(page.locator("#face-list img[src^='blob:']")).to_have_count(2)
    kiosk = httpx.get(
        f"{console_server.base_url}/v1/collections/kiosk/subjects", headers=console_server.headers
    ).json()["subjects"]
    assert [(s["name"], s["face_count"]) for s in kiosk] == [("Kiosk Visitor", 2)]
    expect(_identify(page, photos[8])).to_have_text(re.compile(r"^Kiosk Visitor 0\.\d{3}$"))

    # Back to default from the identify page: it stays, its answer goes; then default's own gallery.
    page.locator("#collection").select_option("default")
    expect(page.locator("#identify-result")).to_be_hidden()
    expect(_identify(page, photos[8])).to_have_text("unknown")
    expect(page.locator("#identify-list")).not_to_contain_text("Kiosk Visitor")
    page.click("#nav a[href='#/subjects']")
    expect(page.locator("#subject-list")).to_have_text("No subjects yet.")

    # A subject page, then kiosk again: back to kiosk's list (that subject is not in it).
    page.locator("#collection").select_option("kiosk")
    page.click("#subject-list a")
    expect(page.locator("#subject-name")).to_have_text("Kiosk Visitor")
    page.locator("#collection").select_option("default")
    expect(page.locator("#view-subjects")).to_be_visible()
    expect(page.locator("#subject-list")).to_have_text("No subjects yet.")

    # The service page lists both collections with their packs and counts.
    page.click("#nav a[href='#/info']")
    rows = page.locator("#info-collections tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(1)).to_contain_text(packs["kiosk"])
    cells = [[cell.strip() for cell in row.locator("td").all_inner_texts()] for row in rows.all()]
    assert [(c[0], c[1], c[4], c[5]) for c in cells] == [
        ("default", packs["default"], "0", "0"),
        ("kiosk", packs["kiosk"], "1", "2"),
    ]
    expect(page.locator("#info-facts")).to_contain_text(packs["default"])


def test_a_key_limited_to_kiosk_signs_in_straight_into_kiosk(page: Any, console_server: LocalServer) -> None:
    """No picker (one collection), never a call to the default gallery (the page fixture fails on a
    console error, and a 403 is one)."""
    from playwright.sync_api import expect

    created = httpx.post(
        f"{console_server.base_url}/v1/keys",
        json={"name": "gate-2", "scopes": ["read"], "collections": ["kiosk"]},
        headers=console_server.headers,
    )
    created.raise_for_status()
    httpx.post(
        f"{console_server.base_url}/v1/collections/kiosk/subjects",
        json={"name": "Gate Guest"},
        headers=console_server.headers,
    ).raise_for_status()

    sign_in(page, console_server, created.json()["key"])
    expect(page.locator("#who-name")).to_have_text("gate-2 (read) · kiosk")
    expect(page.locator("#collection")).to_be_hidden()
    listing = httpx.get(f"{console_server.base_url}/v1/collections", headers=console_server.headers).json()
    kiosk_pack = next(c["pack_id"] for c in listing["collections"] if c["name"] == "kiosk")
    expect(page.locator("#collection-pack")).to_have_text(f"pack {kiosk_pack}")
    expect(page.locator("#subject-list .subject-name", has_text="Gate Guest")).to_have_count(1)
    assert page.evaluate("() => sessionStorage.getItem('face-service.collection')") == "kiosk"

    page.click("#nav a[href='#/info']")
    expect(page.locator("#info-collections tbody tr")).to_have_count(1)
    expect(page.locator("#info-collections tbody tr td").first).to_have_text("kiosk")
    expect(page.locator("#info-facts")).to_contain_text("which this key may not use")
    expect(page.locator("#info-points")).to_be_hidden()
