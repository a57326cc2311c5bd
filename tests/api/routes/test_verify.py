"""/v1/verify: pairs and subject mode on real photos, threshold choice, chosen faces of a group photo."""

from __future__ import annotations

from importlib import resources

from tests.api.conftest import Person, admin_headers
from tests.api.routes.gallery import Enrolled, identify, upload_file

H = admin_headers()


def test_verify_pairs_same_person_above_and_different_below(enrolled: Enrolled, johns: list[Person]) -> None:
    for i, person in enumerate(johns):
        other = johns[(i + 1) % len(johns)]
        same = enrolled.client.post(
            "/v1/verify",
            files=[upload_file(person.probes[0], "image_a"), upload_file(person.probes[1], "image_b")],
            headers=H,
        ).json()
        assert same["mode"] == "pair"
        assert same["threshold"]["name"] == "default"
        assert same["match"] is True, (person.name, same["similarity"])
        assert same["similarity"] >= same["threshold"]["value"]
        assert same["face_a"]["face_index"] == 0
        assert same["face_b"]["faces_in_image"] == 1

        different = enrolled.client.post(
            "/v1/verify",
            files=[upload_file(person.probes[0], "image_a"), upload_file(other.probes[0], "image_b")],
            headers=H,
        ).json()
        assert different["match"] is False, (person.name, other.name, different["similarity"])
        assert different["similarity"] < different["threshold"]["value"] < same["similarity"]


def test_verify_against_an_enrolled_subject(enrolled: Enrolled, johns: list[Person]) -> None:
    person, other = johns[0], johns[1]
    subject_id = enrolled.subject_ids[person.name]
    same = enrolled.client.post(
        "/v1/verify", files=[upload_file(person.probes[2])], data={"subject_id": subject_id}, headers=H
    ).json()
    assert same["mode"] == "subject"
    assert same["subject"] == {"id": subject_id, "name": person.name}
    assert same["match"] is True
    different = enrolled.client.post(
        "/v1/verify", files=[upload_file(other.probes[2])], data={"subject_id": subject_id}, headers=H
    ).json()
    assert different["match"] is False


def test_a_request_may_choose_the_threshold(enrolled: Enrolled, johns: list[Person]) -> None:
    files = [upload_file(johns[0].probes[0], "image_a"), upload_file(johns[0].probes[1], "image_b")]
    strict = enrolled.client.post("/v1/verify", files=files, data={"threshold": "0.9999"}, headers=H).json()
    assert strict["threshold"] == {"name": "custom", "value": 0.9999}
    assert strict["match"] is False
    as_query = enrolled.client.post("/v1/verify?threshold=-1", files=files, headers=H).json()
    assert as_query["threshold"]["value"] == -1.0
    assert as_query["match"] is True
    named = enrolled.client.post("/v1/verify", files=files, data={"threshold": "default"}, headers=H).json()
    assert named["threshold"] == {"name": "default", "value": enrolled.threshold}
    # With every similarity allowed, identification returns top_k subjects for the probe.
    everyone = identify(enrolled.client, johns[0].probes[0], threshold="-1", top_k="3")
    assert len(everyone["faces"][0]["candidates"]) == 3


def test_verify_compares_the_chosen_faces_of_a_group_photo(enrolled: Enrolled) -> None:
    group = (resources.files("insightface") / "data" / "images" / "t1.jpg").read_bytes()

    def verify(index_a: int, index_b: int) -> dict:
        files = [("image_a", ("t1.jpg", group, "image/jpeg")), ("image_b", ("t1.jpg", group, "image/jpeg"))]
        data = {"face_index_a": str(index_a), "face_index_b": str(index_b)}
        response = enrolled.client.post("/v1/verify", files=files, data=data, headers=H)
        assert response.status_code == 200, response.text
        return response.json()

    same_face = verify(2, 2)
    assert same_face["match"] is True
    assert same_face["similarity"] > 0.999  # the same face of the same photo
    assert same_face["face_a"]["faces_in_image"] == same_face["face_b"]["faces_in_image"] == 6
    assert same_face["face_a"]["box"] == same_face["face_b"]["box"]

    neighbours = verify(0, 1)  # two different people in the photo
    assert neighbours["match"] is False
    assert neighbours["face_a"]["box"] != neighbours["face_b"]["box"]
