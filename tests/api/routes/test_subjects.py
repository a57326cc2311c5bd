"""/v1/subjects and /v1/faces: create, list in pages, rename, merge, delete, enroll, read and move faces
(real photos, through HTTP)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from httpx import Response

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


def _top_candidate(client: TestClient, photo: Path) -> dict:
    faces = identify(client, photo, largest_only="true")["faces"]
    assert faces, photo
    assert faces[0]["candidates"], faces
    return faces[0]["candidates"][0]


def _code(problem: Response) -> str:
    """The problem's code: the last part of its ``type`` URN."""
    assert problem.headers["content-type"].startswith("application/problem+json"), problem.text
    return str(problem.json()["type"]).rsplit(":", 1)[-1]


def test_merge_moves_the_faces_and_identify_answers_with_the_target(
    enrolled: Enrolled, shared_faces: Path
) -> None:
    client, deepface = enrolled.client, shared_faces / "deepface_testset"
    # Two people not in the fixture's gallery (its five Johns stay as they are for the other tests).
    a_photos, b_photos = (
        sorted((deepface / "Angelina").glob("*.jpg")),
        sorted((deepface / "Scarlett").glob("*.jpg")),
    )
    a = client.post(
        "/v1/subjects", json={"name": "Angelina", "metadata": {"team": "a", "badge": 7}}, headers=H
    )
    b = client.post(
        "/v1/subjects", json={"name": "Scarlett", "metadata": {"team": "b", "desk": "4F"}}, headers=H
    )
    a_id, b_id = a.json()["id"], b.json()["id"]
    created = [a_id, b_id]
    try:
        a_enrolled = enroll(client, a_id, a_photos[:-1])
        b_enrolled = enroll(client, b_id, b_photos[:-1])
        a_faces = {
            item["face_id"]: a_photos[item["index"]] for item in a_enrolled["results"] if item["accepted"]
        }
        assert len(a_faces) >= 3, a_enrolled
        assert b_enrolled["accepted"] >= 3, b_enrolled
        probe = a_photos[-1]  # never enrolled
        assert _top_candidate(client, probe)["subject_id"] == a_id
        b_before = client.get(f"/v1/subjects/{b_id}", headers=H).json()

        merged = client.post(f"/v1/subjects/{a_id}/merge", json={"into": b_id}, headers=H)

        assert merged.status_code == 200, merged.text
        body = merged.json()
        assert (body["id"], body["name"]) == (b_id, "Scarlett")
        assert body["face_count"] == len(a_faces) + b_enrolled["accepted"]
        assert body["metadata"] == {"team": "b", "desk": "4F", "badge": 7}  # the target's keys win
        assert body["updated_at"] > b_before["updated_at"]
        assert client.get(f"/v1/subjects/{b_id}", headers=H).json() == body
        gone = client.get(f"/v1/subjects/{a_id}", headers=H)
        assert (gone.status_code, _code(gone)) == (404, "subject_not_found")
        b_faces = client.get(f"/v1/subjects/{b_id}/faces", headers=H).json()["faces"]
        assert set(a_faces) <= {face["id"] for face in b_faces}
        answer = _top_candidate(client, probe)
        assert (answer["subject_id"], answer["name"]) == (b_id, "Scarlett")

        # Moving one of Angelina's faces to a subject of her own: the photo it came from now finds her.
        face_id, photo = next(iter(a_faces.items()))
        assert _top_candidate(client, photo)["subject_id"] == b_id
        again = client.post("/v1/subjects", json={"name": "Angelina"}, headers=H).json()
        created.append(again["id"])
        moved = client.post(f"/v1/faces/{face_id}/move", json={"subject_id": again["id"]}, headers=H)
        assert moved.status_code == 200, moved.text
        assert (moved.json()["id"], moved.json()["subject_id"]) == (face_id, again["id"])
        assert client.get(f"/v1/faces/{face_id}", headers=H).json() == moved.json()
        assert client.get(f"/v1/subjects/{again['id']}", headers=H).json()["face_count"] == 1
        assert client.get(f"/v1/subjects/{b_id}", headers=H).json()["face_count"] == body["face_count"] - 1
        answer = _top_candidate(client, photo)
        assert (answer["subject_id"], answer["face_id"]) == (again["id"], face_id)
    finally:
        for subject_id in created:
            client.delete(f"/v1/subjects/{subject_id}", headers=H)


def test_get_face_returns_the_enrolled_face(enrolled: Enrolled) -> None:
    subject_id = enrolled.subject_ids["John_Simm"]
    faces = enrolled.client.get(f"/v1/subjects/{subject_id}/faces", headers=H).json()["faces"]
    for face in faces:
        assert enrolled.client.get(f"/v1/faces/{face['id']}", headers=H).json() == face
    missing = enrolled.client.get("/v1/faces/no-such-face", headers=H)
    assert (missing.status_code, _code(missing)) == (404, "face_not_found")


def test_merge_and_move_refusals_name_what_is_wrong(enrolled: Enrolled) -> None:
    client = enrolled.client
    salley, savage = enrolled.subject_ids["John_Salley"], enrolled.subject_ids["John_Savage"]
    before = [client.get(f"/v1/subjects/{s}", headers=H).json() for s in (salley, savage)]
    face_id = client.get(f"/v1/subjects/{salley}/faces", headers=H).json()["faces"][0]["id"]

    itself = client.post(f"/v1/subjects/{salley}/merge", json={"into": salley}, headers=H)
    assert itself.status_code == 422
    assert _code(itself) == "merge_into_itself"
    assert [e["field"] for e in itself.json()["errors"]] == ["body.into"]

    no_source = client.post("/v1/subjects/no-such-subject/merge", json={"into": savage}, headers=H)
    assert (no_source.status_code, _code(no_source)) == (404, "subject_not_found")
    assert "no-such-subject" in no_source.json()["detail"]
    assert no_source.json()["errors"] == []  # the path's subject
    no_target = client.post(f"/v1/subjects/{salley}/merge", json={"into": "no-such-target"}, headers=H)
    assert (no_target.status_code, _code(no_target)) == (404, "subject_not_found")
    assert "no-such-target" in no_target.json()["detail"]
    assert [e["field"] for e in no_target.json()["errors"]] == ["body.into"]
    no_into = client.post(f"/v1/subjects/{salley}/merge", json={}, headers=H)
    assert no_into.status_code == 422
    assert [e["field"] for e in no_into.json()["errors"]] == ["body.into"]

    no_face = client.post("/v1/faces/no-such-face/move", json={"subject_id": savage}, headers=H)
    assert (no_face.status_code, _code(no_face)) == (404, "face_not_found")
    no_subject = client.post(f"/v1/faces/{face_id}/move", json={"subject_id": "nobody"}, headers=H)
    assert (no_subject.status_code, _code(no_subject)) == (404, "subject_not_found")
    assert [e["field"] for e in no_subject.json()["errors"]] == ["body.subject_id"]

    # A read-only key reads faces but may neither merge nor move.
    key = client.post("/v1/keys", json={"name": "viewer", "scopes": ["read"]}, headers=H).json()["key"]
    read_only = {"X-API-Key": key}
    assert client.get(f"/v1/faces/{face_id}", headers=read_only).status_code == 200
    refused_merge = client.post(f"/v1/subjects/{salley}/merge", json={"into": savage}, headers=read_only)
    refused_move = client.post(f"/v1/faces/{face_id}/move", json={"subject_id": savage}, headers=read_only)
    for refused in (refused_merge, refused_move):
        assert (refused.status_code, _code(refused)) == (403, "insufficient_scope")

    # Nothing above changed either subject.
    assert [client.get(f"/v1/subjects/{s}", headers=H).json() for s in (salley, savage)] == before
    assert client.get(f"/v1/faces/{face_id}", headers=H).json()["subject_id"] == salley
