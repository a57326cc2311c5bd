"""The web console in a real headless chromium against a real service: sign in, create and enroll a
subject from photos, identify, merge, delete a face, search, verify, the service page; a read-only
key is offered no write control. Screenshots go to the test's tmp_path.

Regenerate the README's screenshot with ``FACE_CONSOLE_SCREENSHOT=docs/console.png``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from benchmarks.local_server import LocalServer
from tests.ui.conftest import sign_in

PERSON = "John_Simm"


@pytest.fixture(scope="module")
def photos(shared_faces: Path) -> list[Path]:
    files = sorted((shared_faces / "dlib_johns" / PERSON).glob("*.jpg"))
    assert len(files) == 11, f"expected 11 photos of {PERSON}, found {len(files)}"
    return files


@pytest.fixture(scope="module")
def other_photos(shared_faces: Path) -> list[Path]:
    return sorted((shared_faces / "dlib_johns" / "John_Salley").glob("*.jpg"))[:2]


def subject_id_from_url(page: Any) -> str:
    match = re.search(r"#/subjects/([^/]+)$", page.url)
    assert match, page.url
    return match.group(1)


def test_console_enrolls_identifies_merges_and_deletes(
    page: Any, console_server: LocalServer, photos: list[Path], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    sign_in(page, console_server, console_server.api_key)
    expect(page.locator("#who-name")).to_contain_text("FACE_API_KEY (admin)")

    # Create a subject, enroll three photos of him and a blank image (refused: no face).
    page.fill("#create-name", "John Simm")
    page.click("#create-subject")
    expect(page.locator("#subject-name")).to_have_text("John Simm")
    first_id = subject_id_from_url(page)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(blank)
    page.set_input_files("#enroll-files", [*map(str, photos[:3]), str(blank)])
    page.click("#enroll-button")
    expect(page.locator("#subject-error")).to_have_text("")
    results = page.locator("#enroll-results li")
    expect(results).to_have_count(4)
    expect(page.locator("#enroll-results li.accepted")).to_have_count(3)
    expect(results.nth(3)).to_have_text(re.compile(r"blank\.png: rejected — no_face: "))
    expect(page.locator("#face-list li")).to_have_count(3)
    expect(page.locator("#face-list img[src^='blob:']")).to_have_count(3)  # the stored crops, shown
    page.screenshot(path=str(tmp_path / "subject.png"), full_page=True)

    # Nothing acceptable (a 422 from the API): each image still gets its reason, nothing is added.
    page.set_input_files("#enroll-files", str(blank))
    page.click("#enroll-button")
    expect(page.locator("#enroll-results li")).to_have_count(1)
    expect(page.locator("#enroll-results li.rejected")).to_have_text(
        re.compile(r"^blank\.png: rejected — no_face: ")
    )
    expect(page.locator("#face-list li")).to_have_count(3)

    # Metadata edit: saved, shown again after a reload of the subject.
    page.fill("#metadata", '{"team": "console"}')
    page.click("#metadata-form button[type=submit]")
    expect(page.locator("#subject-facts")).to_contain_text("3 face(s)")
    expect(page.locator("#metadata")).to_have_value(re.compile(r'"team": "console"'))

    # A second subject with one more photo of him, merged into the first.
    page.goto(f"{console_server.base_url}/ui/#/subjects")
    page.fill("#create-name", "Simm duplicate")
    page.click("#create-subject")
    expect(page.locator("#subject-name")).to_have_text("Simm duplicate")
    page.set_input_files("#enroll-files", str(photos[3]))
    page.click("#enroll-button")
    expect(page.locator("#enroll-results li.accepted")).to_have_count(1)
    page.select_option("#merge-into", first_id)
    page.click("#merge-form button[type=submit]")
    expect(page.locator("#subject-name")).to_have_text("John Simm")
    assert subject_id_from_url(page) == first_id
    expect(page.locator("#face-list li")).to_have_count(4)

    # Delete one face.
    page.locator(".delete-face").first.click()
    expect(page.locator("#face-list li")).to_have_count(3)
    expect(page.locator("#subject-facts")).to_contain_text("3 face(s)")

    # The list shows him with a thumbnail: one of his stored crops.
    page.click("#nav a[href='#/subjects']")
    card = page.locator("#subject-list li", has_text="John Simm")
    expect(card.locator("img.thumb[src^='blob:']")).to_have_count(1)
    expect(card).to_contain_text("3 face(s)")
    page.screenshot(path=str(tmp_path / "subjects.png"), full_page=True)

    # Identify another photo of him: his name and the similarity on the box, the threshold over it.
    page.click("#nav a[href='#/identify']")
    page.set_input_files("#identify-file", str(photos[8]))
    page.click("#identify-form button[type=submit]")
    label = page.locator("#identify-result .box span")
    expect(label).to_have_count(1)
    expect(label).to_have_text(re.compile(r"^John Simm 0\.\d{3}$"))
    expect(page.locator("#identify-caption")).to_contain_text("threshold default = 0.")
    page.screenshot(path=str(tmp_path / "identify.png"), full_page=True)

    # A webcam frame (chromium's fake camera: a test pattern) goes the same way: no face in it.
    page.click("#camera-start")
    expect(page.locator("#camera-shot")).to_be_visible()
    page.wait_for_function("() => document.querySelector('#camera').videoWidth > 0")
    page.click("#camera-shot")
    expect(page.locator("#identify-caption")).to_contain_text("· 0 face(s)")
    expect(page.locator("#identify-result .box")).to_have_count(0)

    # Verify two photos of him.
    page.click("#nav a[href='#/verify']")
    page.set_input_files("#verify-a", str(photos[9]))
    page.set_input_files("#verify-b", str(photos[10]))
    page.click("#verify-form button[type=submit]")
    expect(page.locator("#verify-verdict")).to_contain_text("Same person: similarity 0.")
    expect(page.locator("#verify-fig-b .box")).to_have_count(1)

    # The service page: pack, thresholds, gallery size as GET /v1/info reports them.
    info = httpx.get(f"{console_server.base_url}/v1/info", headers=console_server.headers).json()
    page.click("#nav a[href='#/info']")
    facts = page.locator("#info-facts")
    expect(facts).to_contain_text(info["pack_id"])
    gallery = info["gallery"]
    expect(facts).to_contain_text(f"{gallery['subjects']} subject(s), {gallery['faces']} face(s)")
    expect(facts).to_contain_text(f"{gallery['index_type']} on sqlite")
    expect(page.locator("#info-points tbody tr")).to_have_count(len(info["operating_points"]))
    shot = os.environ.get("FACE_CONSOLE_SCREENSHOT")
    if shot:  # the README's picture: the service page, no photo of anyone in it
        page.screenshot(path=shot)


def test_search_lists_only_names_with_the_prefix(page: Any, console_server: LocalServer) -> None:
    """Uses GET /v1/subjects?name_prefix=... (the list filter)."""
    from playwright.sync_api import expect

    for name in ("Ada Lovelace", "adam smith", "Grace Hopper"):
        created = httpx.post(
            f"{console_server.base_url}/v1/subjects", json={"name": name}, headers=console_server.headers
        )
        created.raise_for_status()
    sign_in(page, console_server, console_server.api_key)
    page.fill("#search", "ada")
    page.click("#search-form button[type=submit]")
    names = page.locator("#subject-list .subject-name")
    expect(names).to_have_text(["Ada Lovelace", "adam smith"])  # case-insensitive; Grace is not listed
    page.fill("#search", "nobody")
    page.click("#search-form button[type=submit]")
    expect(page.locator("#subject-list")).to_contain_text("No subject name starts with “nobody”.")


def test_paging_follows_the_api_cursor(page: Any, console_server: LocalServer) -> None:
    from playwright.sync_api import expect

    existing = httpx.get(
        f"{console_server.base_url}/v1/subjects", params={"limit": 500}, headers=console_server.headers
    ).json()["subjects"]
    for i in range(25 - len(existing) + 1):  # more than one page of 24
        httpx.post(
            f"{console_server.base_url}/v1/subjects",
            json={"name": f"Pager {i:02d}"},
            headers=console_server.headers,
        ).raise_for_status()
    sign_in(page, console_server, console_server.api_key)
    expect(page.locator("#subject-list li")).to_have_count(24)
    expect(page.locator("#prev-page")).to_be_disabled()
    page.click("#next-page")
    expect(page.locator("#page-label")).to_have_text("Page 2")
    expect(page.locator("#next-page")).to_be_disabled()
    second = page.locator("#subject-list li")
    assert second.count() >= 1
    page.click("#prev-page")
    expect(page.locator("#subject-list li")).to_have_count(24)


def test_a_read_only_key_is_offered_no_write_control(
    page: Any, console_server: LocalServer, read_only_key: str, other_photos: list[Path]
) -> None:
    from playwright.sync_api import expect

    subject = httpx.post(
        f"{console_server.base_url}/v1/subjects",
        json={"name": "Read Only View"},
        headers=console_server.headers,
    ).json()
    enrolled = httpx.post(
        f"{console_server.base_url}/v1/subjects/{subject['id']}/faces",
        files=[("images", (other_photos[0].name, other_photos[0].read_bytes(), "image/jpeg"))],
        headers=console_server.headers,
    )
    assert enrolled.status_code == 201, enrolled.text

    sign_in(page, console_server, read_only_key)
    expect(page.locator("#who-name")).to_contain_text("viewer (read)")
    expect(page.locator("#create-form")).to_be_hidden()
    page.goto(f"{console_server.base_url}/ui/#/subjects/{subject['id']}")
    expect(page.locator("#subject-name")).to_have_text("Read Only View")
    expect(page.locator("#face-list img[src^='blob:']")).to_have_count(1)  # reading is allowed
    for control in ("#enroll-form", "#rename-form", "#merge-form", "#delete-subject"):
        expect(page.locator(control)).to_be_hidden()
    expect(page.locator("#metadata-form button")).to_be_hidden()
    expect(page.locator(".delete-face")).to_have_count(0)
    assert page.locator("#metadata").evaluate("node => node.readOnly")
    # Identify needs only the read scope.
    page.click("#nav a[href='#/identify']")
    page.set_input_files("#identify-file", str(other_photos[1]))
    page.click("#identify-form button[type=submit]")
    expect(page.locator("#identify-result .box span")).to_have_text(re.compile(r"^Read Only View 0\.\d{3}$"))

    # Signing out forgets the key: a reload asks for it again.
    page.click("#sign-out")
    page.reload()
    expect(page.locator("#view-sign-in")).to_be_visible()
    assert page.evaluate("() => sessionStorage.length") == 0


def test_a_wrong_key_is_refused_at_sign_in(browser: Any, console_server: LocalServer) -> None:
    from playwright.sync_api import expect

    context = browser.new_context()
    try:
        tab = context.new_page()
        tab.goto(f"{console_server.base_url}/ui/")
        tab.fill("#api-key", "fsk_0123456789ab_" + "A" * 43)
        tab.click("#sign-in-form button[type=submit]")
        expect(tab.locator("#sign-in-error")).to_contain_text("the API key is unknown or revoked")
        expect(tab.locator("#nav")).to_be_hidden()
        assert tab.evaluate("() => sessionStorage.length") == 0  # a refused key is not kept
    finally:
        context.close()
