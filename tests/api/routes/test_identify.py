"""/v1/identify: enrolled people are found, strangers are unknown, the face policy picks the subject."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import Person, admin_headers
from tests.api.routes.gallery import Enrolled, identify, upload_file

H = admin_headers()


def test_every_other_image_of_an_enrolled_person_is_identified(
    enrolled: Enrolled, johns: list[Person]
) -> None:
    wrong = []
    for person in johns:
        for probe in person.probes:
            faces = identify(enrolled.client, probe, largest_only="true")["faces"]
            assert len(faces) == 1, f"{probe.name}: {len(faces)} faces"
            face = faces[0]
            top = face["candidates"][0]["subject_id"] if face["candidates"] else None
            if face["unknown"] or top != enrolled.subject_ids[person.name]:
                wrong.append((person.name, probe.name, face["candidates"][:2]))
            sims = [c["similarity"] for c in face["candidates"]]
            assert sims == sorted(sims, reverse=True)
            assert all(s >= enrolled.threshold for s in sims)
    assert wrong == [], wrong


def test_people_never_enrolled_are_unknown(enrolled: Enrolled, strangers: list[Path]) -> None:
    for path in strangers:
        response = identify(enrolled.client, path)
        assert response["faces"], f"no face found in {path.name}"
        for face in response["faces"]:
            assert face["unknown"] is True, (path.name, face["candidates"])
            assert face["candidates"] == []


def test_face_policy_picks_the_subject_of_a_group_photo(enrolled: Enrolled, shared_faces: Path) -> None:
    """celeba_wild 7313/009197.jpg: the largest face is a bystander, the subject is nearer the centre."""
    person = shared_faces / "celeba_wild" / "7313"
    group, single = person / "009197.jpg", person / "009429.jpg"

    def verify(**data: str) -> dict:
        files = [upload_file(group, "image_a"), upload_file(single, "image_b")]
        response = enrolled.client.post("/v1/verify", files=files, data=data, headers=H)
        assert response.status_code == 200, response.text
        return response.json()

    by_default = verify()  # FACE_FACE_POLICY: centre
    assert by_default["face_a"]["faces_in_image"] >= 2
    assert by_default["face_a"]["face_index"] != 0  # not the largest face
    assert by_default["match"] is True, by_default["similarity"]
    largest = verify(face_policy="largest")
    assert largest["face_a"]["face_index"] == 0
    assert largest["match"] is False
    explicit = verify(face_index_a=str(by_default["face_a"]["face_index"]), face_policy="largest")
    assert explicit["similarity"] == pytest.approx(by_default["similarity"], abs=1e-6)
    bad = enrolled.client.post(
        "/v1/verify",
        files=[upload_file(group, "image_a"), upload_file(single, "image_b")],
        data={"face_policy": "tallest"},
        headers=H,
    )
    assert bad.status_code == 422
    assert "face_policy" in bad.text

    one = enrolled.client.post(
        "/v1/identify", files=[upload_file(group)], data={"largest_only": "true"}, headers=H
    )
    assert one.status_code == 200, one.text
    (chosen,) = one.json()["faces"]
    every = enrolled.client.post("/v1/identify", files=[upload_file(group)], headers=H).json()["faces"]
    assert len(every) >= 2
    assert chosen["box"] != every[0]["box"]  # the policy's face, not the largest
