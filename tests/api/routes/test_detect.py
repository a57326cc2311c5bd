"""/v1/detect and /v1/embed: every face of a photo, with boxes, landmarks and unit embeddings."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from tests.api.conftest import Person, admin_headers
from tests.api.routes.gallery import Enrolled, upload_file

H = admin_headers()


def test_detect_and_embed_report_faces(enrolled: Enrolled, johns: list[Person], shared_faces: Path) -> None:
    detected = enrolled.client.post("/v1/detect", files=[upload_file(johns[0].probes[0])], headers=H).json()
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

    embedded = enrolled.client.post("/v1/embed", files=[upload_file(johns[0].probes[0])], headers=H).json()
    info = enrolled.client.get("/v1/info", headers=H).json()
    assert embedded["pack_id"] == info["pack_id"]
    (vector,) = [f["embedding"] for f in embedded["faces"]]
    assert len(vector) == info["embedding_size"] == embedded["embedding_size"]
    assert sum(v * v for v in vector) == pytest.approx(1.0, abs=1e-4)

    portrait = enrolled.client.post(
        "/v1/detect", files=[upload_file(shared_faces / "deepface_testset" / "Elon" / "img18.jpg")], headers=H
    )
    assert portrait.status_code == 200
    assert len(portrait.json()["faces"]) == 1  # a head-and-shoulders portrait of one man

    group_photo = resources.files("insightface") / "data" / "images" / "t1.jpg"
    group = enrolled.client.post(
        "/v1/detect", files=[("image", ("t1.jpg", group_photo.read_bytes(), "image/jpeg"))], headers=H
    )
    assert group.status_code == 200
    assert len(group.json()["faces"]) == 6  # the six people at the table
