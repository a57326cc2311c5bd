"""/v1/subjects: create, list in pages, rename, delete, enroll faces (real photos, through HTTP)."""

from __future__ import annotations

from pathlib import Path

from tests.api.conftest import Person, admin_headers, running_app
from tests.api.routes.gallery import Enrolled, enroll, identify, upload_file

H = admin_headers()


def test_enrolled_subjects_have_their_faces(enrolled: Enrolled, johns: list[Person]) -> None:
    for person in johns:
        subject = enrolled.client.get(f"/v1/subjects/{enrolled.subject_ids[person.name]}", headers=H).json()
        assert subject["name"] == person.name
        assert subject["face_count"] == len(person.enroll)
        assert subject["metadata"] == {"set": "dlib_johns"}
        faces = enrolled.client.get(f"/v1/subjects/{subject['id']}/faces", headers=H).json()["faces"]
        assert len(faces) == len(person.enroll)
        assert all(face["quality"]["size"] > 0 for face in faces)


def test_subjects_are_listed_in_pages(enrolled: Enrolled) -> None:
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = enrolled.client.get("/v1/subjects", params=params, headers=H).json()
        seen += [subject["id"] for subject in page["subjects"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(enrolled.subject_ids.values())  # creation order, no duplicates


def test_update_and_delete_change_what_identify_sees(enrolled: Enrolled, shared_faces: Path) -> None:
    client = enrolled.client
    deepface = shared_faces / "deepface_testset"
    created = client.post("/v1/subjects", json={"name": "temp"}, headers=H).json()
    result = enroll(
        client, created["id"], [deepface / "Jennifer" / "img3.jpg", deepface / "Jennifer" / "img53.jpg"]
    )
    # Two sharp, frontal, single-face portraits of her: both must be enrolled.
    assert (result["accepted"], result["rejected"]) == (2, 0), result
    probe = deepface / "Jennifer" / "img54.jpg"

    renamed = client.patch(f"/v1/subjects/{created['id']}", json={"name": "Jennifer"}, headers=H)
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "Jennifer"
    before = identify(client, probe, largest_only="true")["faces"][0]
    assert [c["name"] for c in before["candidates"]][:1] == ["Jennifer"], before

    face_ids = [f["id"] for f in client.get(f"/v1/subjects/{created['id']}/faces", headers=H).json()["faces"]]
    assert client.delete(f"/v1/faces/{face_ids[0]}", headers=H).status_code == 204
    assert client.get(f"/v1/subjects/{created['id']}", headers=H).json()["face_count"] == len(face_ids) - 1

    assert client.delete(f"/v1/subjects/{created['id']}", headers=H).status_code == 204
    assert client.get(f"/v1/subjects/{created['id']}", headers=H).status_code == 404
    after = identify(client, probe, largest_only="true")["faces"][0]
    assert all(c["subject_id"] != created["id"] for c in after["candidates"])


def test_restarted_app_finds_the_gallery_intact(
    tmp_path: Path, default_pack_dir: Path, johns: list[Person], database_url: str | None
) -> None:
    people = johns[:2]
    with running_app(tmp_path, default_pack_dir, database_url=database_url) as client:
        ids = {}
        for person in people:
            ids[person.name] = client.post("/v1/subjects", json={"name": person.name}, headers=H).json()["id"]
            enroll(client, ids[person.name], person.enroll[:3])
        before = identify(client, people[0].probes[0])
        listing = client.get("/v1/subjects", headers=H).json()

    with running_app(tmp_path, default_pack_dir, database_url=database_url) as restarted:
        assert restarted.get("/v1/subjects", headers=H).json() == listing
        after = identify(restarted, people[0].probes[0])
        assert after == before
        assert after["faces"][0]["candidates"][0]["subject_id"] == ids[people[0].name]
        for person in people:
            faces = restarted.get(f"/v1/subjects/{ids[person.name]}/faces", headers=H).json()["faces"]
            assert len(faces) == 3


def test_enrolling_a_group_photo_needs_an_explicit_face_policy(
    enrolled: Enrolled, shared_faces: Path
) -> None:
    group = shared_faces / "celeba_wild" / "7313" / "009197.jpg"
    created = enrolled.client.post("/v1/subjects", json={"name": "celeba 7313"}, headers=H).json()
    url = f"/v1/subjects/{created['id']}/faces"
    refused = enrolled.client.post(url, files=[upload_file(group, "images")], headers=H)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["code"] == "multiple_faces"
    assert "face_policy" in refused.json()["errors"][0]["reason"]
    assert enrolled.client.get(f"{url}", headers=H).json()["faces"] == []  # nothing was kept
    chosen = enrolled.client.post(
        url, files=[upload_file(group, "images")], data={"face_policy": "centre"}, headers=H
    )
    assert chosen.status_code == 201, chosen.text
    probe = shared_faces / "celeba_wild" / "7313" / "009429.jpg"
    verdict = enrolled.client.post(
        "/v1/verify", files=[upload_file(probe)], data={"subject_id": created["id"]}, headers=H
    ).json()
    assert verdict["match"] is True, verdict
    enrolled.client.delete(f"/v1/subjects/{created['id']}", headers=H)
