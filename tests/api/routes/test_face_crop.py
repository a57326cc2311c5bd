"""GET /v1/faces/{face_id}/crop: the stored crop of an enrolled face as PNG (real photos, both backends)."""

from __future__ import annotations

import io
from pathlib import Path

from httpx import Response
from PIL import Image

from tests.api.conftest import Person, running_app
from tests.api.routes.gallery import Enrolled, H, enroll


def _code(problem: Response) -> str:
    """The problem's code: the last part of its ``type`` URN."""
    assert problem.headers["content-type"].startswith("application/problem+json"), problem.text
    return str(problem.json()["type"]).rsplit(":", 1)[-1]


def test_the_crop_is_a_png_of_the_enrolled_face(enrolled: Enrolled) -> None:
    client = enrolled.client
    subject_id = enrolled.subject_ids["John_Simm"]
    faces = client.get(f"/v1/subjects/{subject_id}/faces", headers=H).json()["faces"]
    crops = []
    for face in faces:
        response = client.get(f"/v1/faces/{face['id']}/crop", headers=H)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        assert "no-store" in response.headers["cache-control"]  # biometric data: never cached on the way
        image = Image.open(io.BytesIO(response.content))
        assert (image.format, image.mode) == ("PNG", "RGB")
        crops.append(response.content)
    assert len(set(crops)) == len(faces)  # one crop per face, not one image for all

    # What was stored is the face: identify names its subject from the crop alone. (One of these
    # tight dlib chips re-detects badly inside its black-padded crop: most, not all, must match.)
    named = 0
    for crop in crops:
        identified = client.post(
            "/v1/identify",
            files=[("image", ("crop.png", crop, "image/png"))],
            data={"largest_only": "true"},
            headers=H,
        ).json()
        candidates = identified["faces"][0]["candidates"] if identified["faces"] else []
        named += bool(candidates) and candidates[0]["subject_id"] == subject_id
    assert named >= len(crops) - 1, named


def test_crop_refusals_say_why(enrolled: Enrolled) -> None:
    client = enrolled.client
    missing = client.get("/v1/faces/no-such-face/crop", headers=H)
    assert (missing.status_code, _code(missing)) == (404, "face_not_found")
    assert "no-such-face" in missing.json()["detail"]

    face_id = client.get(f"/v1/subjects/{enrolled.subject_ids['John_Savage']}/faces", headers=H).json()[
        "faces"
    ][0]["id"]
    assert client.get(f"/v1/faces/{face_id}/crop").status_code == 401
    key = client.post("/v1/keys", json={"name": "viewer", "scopes": ["read"]}, headers=H).json()["key"]
    assert client.get(f"/v1/faces/{face_id}/crop", headers={"X-API-Key": key}).status_code == 200


def test_a_face_enrolled_without_a_crop_answers_404_face_has_no_crop(
    tmp_path: Path, default_pack_dir: Path, johns: list[Person]
) -> None:
    with running_app(tmp_path / "data", default_pack_dir, store_crops=False) as client:
        subject = client.post("/v1/subjects", json={"name": "no crops"}, headers=H).json()
        result = enroll(client, subject["id"], johns[0].enroll[:1])
        face_id = result["results"][0]["face_id"]
        response = client.get(f"/v1/faces/{face_id}/crop", headers=H)
    assert (response.status_code, _code(response)) == (404, "face_has_no_crop")
    assert "FACE_STORE_CROPS" in response.json()["detail"]
