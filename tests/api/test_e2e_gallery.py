"""End to end through HTTP on the real default pack: enroll the dlib_johns people, identify, verify."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.api.conftest import Person, admin_headers, png_bytes, running_app

H = admin_headers()


@dataclass(frozen=True)
class Enrolled:
    client: TestClient
    subject_ids: dict[str, str]  # person name -> subject id
    threshold: float  # the pack's default operating point


def _file(path: Path, field: str = "image") -> tuple[str, tuple[str, bytes, str]]:
    if path.suffix == ".pgm":  # the API takes JPEG/PNG/WebP/BMP: send ORL's PGMs as PNG, as a client would
        return field, (path.stem + ".png", png_bytes(Image.open(path)), "image/png")
    return field, (path.name, path.read_bytes(), "application/octet-stream")


def _enroll(client: TestClient, subject_id: str, images: list[Path]) -> dict:
    response = client.post(
        f"/v1/subjects/{subject_id}/faces", files=[_file(path, "images") for path in images], headers=H
    )
    assert response.status_code == 201, response.text
    return response.json()


def _identify(client: TestClient, path: Path, **form: str) -> dict:
    response = client.post("/v1/identify", files=[_file(path)], data=form, headers=H)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def enrolled(
    tmp_path_factory: pytest.TempPathFactory, default_pack_dir: Path, johns: list[Person]
) -> Iterator[Enrolled]:
    data_dir = tmp_path_factory.mktemp("e2e-gallery")
    with running_app(data_dir, default_pack_dir) as client:
        subject_ids = {}
        for person in johns:
            created = client.post(
                "/v1/subjects", json={"name": person.name, "metadata": {"set": "dlib_johns"}}, headers=H
            )
            assert created.status_code == 201, created.text
            subject_ids[person.name] = created.json()["id"]
            result = _enroll(client, subject_ids[person.name], person.enroll)
            assert result["accepted"] == len(person.enroll), result
        info = client.get("/v1/info", headers=H).json()
        yield Enrolled(client, subject_ids, info["threshold"]["value"])


def test_enrolled_subjects_have_their_faces(enrolled: Enrolled, johns: list[Person]) -> None:
    for person in johns:
        subject = enrolled.client.get(f"/v1/subjects/{enrolled.subject_ids[person.name]}", headers=H).json()
        assert subject["name"] == person.name
        assert subject["face_count"] == len(person.enroll)
        assert subject["metadata"] == {"set": "dlib_johns"}
        faces = enrolled.client.get(f"/v1/subjects/{subject['id']}/faces", headers=H).json()["faces"]
        assert len(faces) == len(person.enroll)
        assert all(face["quality"]["size"] > 0 for face in faces)


def test_every_other_image_of_an_enrolled_person_is_identified(
    enrolled: Enrolled, johns: list[Person]
) -> None:
    wrong = []
    for person in johns:
        for probe in person.probes:
            faces = _identify(enrolled.client, probe, largest_only="true")["faces"]
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
        response = _identify(enrolled.client, path)
        assert response["faces"], f"no face found in {path.name}"
        for face in response["faces"]:
            assert face["unknown"] is True, (path.name, face["candidates"])
            assert face["candidates"] == []


def test_verify_pairs_same_person_above_and_different_below(enrolled: Enrolled, johns: list[Person]) -> None:
    for i, person in enumerate(johns):
        other = johns[(i + 1) % len(johns)]
        same = enrolled.client.post(
            "/v1/verify",
            files=[_file(person.probes[0], "image_a"), _file(person.probes[1], "image_b")],
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
            files=[_file(person.probes[0], "image_a"), _file(other.probes[0], "image_b")],
            headers=H,
        ).json()
        assert different["match"] is False, (person.name, other.name, different["similarity"])
        assert different["similarity"] < different["threshold"]["value"] < same["similarity"]


def test_verify_against_an_enrolled_subject(enrolled: Enrolled, johns: list[Person]) -> None:
    person, other = johns[0], johns[1]
    subject_id = enrolled.subject_ids[person.name]
    same = enrolled.client.post(
        "/v1/verify", files=[_file(person.probes[2])], data={"subject_id": subject_id}, headers=H
    ).json()
    assert same["mode"] == "subject"
    assert same["subject"] == {"id": subject_id, "name": person.name}
    assert same["match"] is True
    different = enrolled.client.post(
        "/v1/verify", files=[_file(other.probes[2])], data={"subject_id": subject_id}, headers=H
    ).json()
    assert different["match"] is False


def test_a_request_may_choose_the_threshold(enrolled: Enrolled, johns: list[Person]) -> None:
    files = [_file(johns[0].probes[0], "image_a"), _file(johns[0].probes[1], "image_b")]
    strict = enrolled.client.post("/v1/verify", files=files, data={"threshold": "0.9999"}, headers=H).json()
    assert strict["threshold"] == {"name": "custom", "value": 0.9999}
    assert strict["match"] is False
    as_query = enrolled.client.post("/v1/verify?threshold=-1", files=files, headers=H).json()
    assert as_query["threshold"]["value"] == -1.0
    assert as_query["match"] is True
    named = enrolled.client.post("/v1/verify", files=files, data={"threshold": "default"}, headers=H).json()
    assert named["threshold"] == {"name": "default", "value": enrolled.threshold}
    # With every similarity allowed, identification returns top_k subjects for the probe.
    everyone = _identify(enrolled.client, johns[0].probes[0], threshold="-1", top_k="3")
    assert len(everyone["faces"][0]["candidates"]) == 3


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
    result = _enroll(
        client, created["id"], [deepface / "Jennifer" / "img3.jpg", deepface / "Jennifer" / "img53.jpg"]
    )
    # Two sharp, frontal, single-face portraits of her: both must be enrolled.
    assert (result["accepted"], result["rejected"]) == (2, 0), result
    probe = deepface / "Jennifer" / "img54.jpg"

    renamed = client.patch(f"/v1/subjects/{created['id']}", json={"name": "Jennifer"}, headers=H)
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "Jennifer"
    before = _identify(client, probe, largest_only="true")["faces"][0]
    assert [c["name"] for c in before["candidates"]][:1] == ["Jennifer"], before

    face_ids = [f["id"] for f in client.get(f"/v1/subjects/{created['id']}/faces", headers=H).json()["faces"]]
    assert client.delete(f"/v1/faces/{face_ids[0]}", headers=H).status_code == 204
    assert client.get(f"/v1/subjects/{created['id']}", headers=H).json()["face_count"] == len(face_ids) - 1

    assert client.delete(f"/v1/subjects/{created['id']}", headers=H).status_code == 204
    assert client.get(f"/v1/subjects/{created['id']}", headers=H).status_code == 404
    after = _identify(client, probe, largest_only="true")["faces"][0]
    assert all(c["subject_id"] != created["id"] for c in after["candidates"])


def test_detect_and_embed_report_faces(enrolled: Enrolled, johns: list[Person], shared_faces: Path) -> None:
    detected = enrolled.client.post("/v1/detect", files=[_file(johns[0].probes[0])], headers=H).json()
    assert detected["image"] == {"width": 150, "height": 150}
    (face,) = detected["faces"]
    marks = face["landmarks"]
    assert marks["left_eye"][0] < marks["right_eye"][0]
    assert max(marks["left_eye"][1], marks["right_eye"][1]) < min(
        marks["mouth_left"][1], marks["mouth_right"][1]
    )
    assert face["box"]["x1"] < marks["nose"][0] < face["box"]["x2"]
    assert 0.0 < face["score"] <= 1.0
    assert face["quality"]["sharpness"] > 0

    embedded = enrolled.client.post("/v1/embed", files=[_file(johns[0].probes[0])], headers=H).json()
    info = enrolled.client.get("/v1/info", headers=H).json()
    assert embedded["pack_id"] == info["pack_id"]
    (vector,) = [f["embedding"] for f in embedded["faces"]]
    assert len(vector) == info["embedding_size"] == embedded["embedding_size"]
    assert sum(v * v for v in vector) == pytest.approx(1.0, abs=1e-4)

    portrait = enrolled.client.post(
        "/v1/detect", files=[_file(shared_faces / "deepface_testset" / "Elon" / "img18.jpg")], headers=H
    )
    assert portrait.status_code == 200
    assert len(portrait.json()["faces"]) == 1  # a head-and-shoulders portrait of one man

    group_photo = resources.files("insightface") / "data" / "images" / "t1.jpg"
    group = enrolled.client.post(
        "/v1/detect", files=[("image", ("t1.jpg", group_photo.read_bytes(), "image/jpeg"))], headers=H
    )
    assert group.status_code == 200
    assert len(group.json()["faces"]) == 6  # the six people at the table


def test_info_and_metrics_describe_the_running_service(enrolled: Enrolled, johns: list[Person]) -> None:
    info = enrolled.client.get("/v1/info", headers=H).json()
    assert info["pack_id"].startswith("sface-retinaface-")
    assert set(info["providers"]) == {"detector", "embedder"}
    assert "CPUExecutionProvider" in info["providers"]["embedder"]
    assert "default" in info["operating_points"]
    assert info["threshold"]["name"] == "default"
    assert info["gallery"]["subjects"] == len(johns)
    assert info["gallery"]["faces"] == sum(len(p.enroll) for p in johns)
    assert info["gallery"]["index_type"]

    metrics = enrolled.client.get("/metrics")  # no key needed
    assert metrics.status_code == 200
    text = metrics.text
    assert 'route="/v1/identify"' in text
    assert 'route="/v1/subjects/{subject_id}/faces"' in text
    assert f"face_gallery_faces {float(info['gallery']['faces'])}" in text
    embedded = [line for line in text.splitlines() if line.startswith("face_faces_embedded_total")]
    assert embedded
    assert float(embedded[0].split()[-1]) >= info["gallery"]["faces"]
    assert "face_embedding_batch_size_count" in text
    assert enrolled.client.get("/healthz").json() == {"status": "ok"}
    assert enrolled.client.get("/readyz").json()["status"] == "ready"


def test_restarted_app_finds_the_gallery_intact(
    tmp_path: Path, default_pack_dir: Path, johns: list[Person]
) -> None:
    people = johns[:2]
    with running_app(tmp_path, default_pack_dir) as client:
        ids = {}
        for person in people:
            ids[person.name] = client.post("/v1/subjects", json={"name": person.name}, headers=H).json()["id"]
            _enroll(client, ids[person.name], person.enroll[:3])
        before = _identify(client, people[0].probes[0])
        listing = client.get("/v1/subjects", headers=H).json()

    with running_app(tmp_path, default_pack_dir) as restarted:
        assert restarted.get("/v1/subjects", headers=H).json() == listing
        after = _identify(restarted, people[0].probes[0])
        assert after == before
        assert after["faces"][0]["candidates"][0]["subject_id"] == ids[people[0].name]
        for person in people:
            faces = restarted.get(f"/v1/subjects/{ids[person.name]}/faces", headers=H).json()["faces"]
            assert len(faces) == 3


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


def test_face_policy_picks_the_subject_of_a_group_photo(enrolled: Enrolled, shared_faces: Path) -> None:
    """celeba_wild 7313/009197.jpg: the largest face is a bystander, the subject is nearer the centre."""
    person = shared_faces / "celeba_wild" / "7313"
    group, single = person / "009197.jpg", person / "009429.jpg"

    def verify(**data: str) -> dict:
        files = [_file(group, "image_a"), _file(single, "image_b")]
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
        files=[_file(group, "image_a"), _file(single, "image_b")],
        data={"face_policy": "tallest"},
        headers=H,
    )
    assert bad.status_code == 422
    assert "face_policy" in bad.text

    one = enrolled.client.post("/v1/identify", files=[_file(group)], data={"largest_only": "true"}, headers=H)
    assert one.status_code == 200, one.text
    (chosen,) = one.json()["faces"]
    every = enrolled.client.post("/v1/identify", files=[_file(group)], headers=H).json()["faces"]
    assert len(every) >= 2
    assert chosen["box"] != every[0]["box"]  # the policy's face, not the largest


def test_enrolling_a_group_photo_needs_an_explicit_face_policy(
    enrolled: Enrolled, shared_faces: Path
) -> None:
    group = shared_faces / "celeba_wild" / "7313" / "009197.jpg"
    created = enrolled.client.post("/v1/subjects", json={"name": "celeba 7313"}, headers=H).json()
    url = f"/v1/subjects/{created['id']}/faces"
    refused = enrolled.client.post(url, files=[_file(group, "images")], headers=H)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["code"] == "multiple_faces"
    assert "face_policy" in refused.json()["errors"][0]["reason"]
    assert enrolled.client.get(f"{url}", headers=H).json()["faces"] == []  # nothing was kept
    chosen = enrolled.client.post(
        url, files=[_file(group, "images")], data={"face_policy": "centre"}, headers=H
    )
    assert chosen.status_code == 201, chosen.text
    probe = shared_faces / "celeba_wild" / "7313" / "009429.jpg"
    verdict = enrolled.client.post(
        "/v1/verify", files=[_file(probe)], data={"subject_id": created["id"]}, headers=H
    ).json()
    assert verdict["match"] is True, verdict
    enrolled.client.delete(f"/v1/subjects/{created['id']}", headers=H)
