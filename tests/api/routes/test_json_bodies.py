"""JSON bodies with base64 images (detect, embed, verify, identify, enrollment) answer as multipart
does, with the same limits and errors; /v1/identify/embedding searches a client's own embedding."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.uploads import URLS_NOT_FETCHED, max_base64_chars
from tests.api.conftest import Person, admin_headers
from tests.api.routes.gallery import Enrolled, upload_file

H = admin_headers()
MAX_IMAGE_BYTES = 16 * 1024 * 1024  # the defaults the enrolled app runs with
MAX_REQUEST_BYTES = 32 * 1024 * 1024


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"].endswith(f":{code}"), body
    return body


def fields(body: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(error["field"], error.get("code")) for error in body["errors"]]


def same_problem(a: httpx.Response, b: httpx.Response) -> None:
    """Two error answers alike but for their request ids."""
    assert a.status_code == b.status_code, (a.text, b.text)
    left, right = a.json(), b.json()
    for body in (left, right):
        body.pop("request_id")
    assert left == right


def test_json_answers_as_multipart_does(enrolled: Enrolled, johns: list[Person]) -> None:
    client = enrolled.client
    photo, other = johns[0].probes[0], johns[1].probes[0]
    for path, form in (
        ("/v1/detect", {}),
        ("/v1/embed", {}),
        ("/v1/identify", {"top_k": 2, "largest_only": True, "threshold": "-1"}),
    ):
        multipart = ok(
            client.post(
                path, files=[upload_file(photo)], data={k: str(v) for k, v in form.items()}, headers=H
            )
        )
        as_json = ok(client.post(path, json={"image": b64(photo), **form}, headers=H))
        assert as_json == multipart, path
    identified = ok(client.post("/v1/identify", json={"image": b64(photo), "top_k": 2}, headers=H))
    assert identified["faces"][0]["candidates"][0]["subject_id"] == enrolled.subject_ids[johns[0].name]

    data_url = ok(
        client.post("/v1/detect", json={"image": "data:image/jpeg;base64," + b64(photo)}, headers=H)
    )
    wrapped = "\n".join(b64(photo)[i : i + 76] for i in range(0, len(b64(photo)), 76))  # `base64 photo.jpg`
    assert ok(client.post("/v1/detect", json={"image": wrapped}, headers=H)) == data_url

    pair_files = [upload_file(photo, "image_a"), upload_file(other, "image_b")]
    pair = ok(client.post("/v1/verify", files=pair_files, data={"face_policy": "largest"}, headers=H))
    pair_json = {"image_a": b64(photo), "image_b": b64(other), "face_policy": "largest"}
    assert ok(client.post("/v1/verify", json=pair_json, headers=H)) == pair
    assert pair["match"] is False
    subject_id = enrolled.subject_ids[johns[0].name]
    subject = ok(
        client.post("/v1/verify", files=[upload_file(photo)], data={"subject_id": subject_id}, headers=H)
    )
    as_json = ok(
        client.post(
            "/v1/verify?threshold=0.1", json={"image": b64(photo), "subject_id": subject_id}, headers=H
        )
    )
    assert subject["match"] is True
    assert as_json["threshold"]["value"] == 0.1
    assert as_json["similarity"] == subject["similarity"]

    # Enrollment, in two new subjects (deleted after: the round-trip test expects John's own).
    created = [
        ok(client.post("/v1/subjects", json={"name": f"json-{i}"}, headers=H), 201)["id"] for i in (0, 1)
    ]
    try:
        images = [photo, johns[0].probes[1]]
        by_form = client.post(
            f"/v1/subjects/{created[0]}/faces", files=[upload_file(p, "images") for p in images], headers=H
        )
        by_json = client.post(
            f"/v1/subjects/{created[1]}/faces", json={"images": [b64(p) for p in images]}, headers=H
        )
        form_result, json_result = ok(by_form, 201), ok(by_json, 201)
        assert json_result["accepted"] == form_result["accepted"] == 2
        assert [r["filename"] for r in json_result["results"]] == [None, None]  # JSON images have no name
        faces = [ok(client.get(f"/v1/subjects/{s}/faces", headers=H))["faces"] for s in created]
        assert len(faces[0]) == len(faces[1]) == 2
    finally:
        for created_id in created:
            client.delete(f"/v1/subjects/{created_id}", headers=H)


def test_json_refusals_name_the_field(enrolled: Enrolled, johns: list[Person]) -> None:
    client = enrolled.client
    photo = b64(johns[0].probes[0])

    bad = problem(
        client.post("/v1/detect", json={"image": photo[:-3] + "$=="}, headers=H), 422, "validation_error"
    )
    assert fields(bad) == [("body.image", "base64_invalid")]
    no_padding = problem(
        client.post("/v1/embed", json={"image": photo.rstrip("=") + "A"}, headers=H), 422, "validation_error"
    )
    assert fields(no_padding) == [("body.image", "base64_invalid")]
    second = client.post(
        f"/v1/subjects/{enrolled.subject_ids[johns[0].name]}/faces",
        json={"images": [photo, "not base64!"]},
        headers=H,
    )
    assert fields(problem(second, 422, "validation_error")) == [("body.images.1", "base64_invalid")]

    for url in ("http://169.254.169.254/latest/meta-data", "https://example.com/a.jpg", "FTP://host/a.jpg"):
        refused = problem(
            client.post("/v1/identify", json={"image": url}, headers=H), 422, "validation_error"
        )
        assert fields(refused) == [("body.image", "url_not_fetched")]
        assert refused["errors"][0]["reason"] == URLS_NOT_FETCHED
    not_b64_url = client.post("/v1/detect", json={"image": "data:image/png,rawbytes"}, headers=H)
    assert fields(problem(not_b64_url, 422, "validation_error")) == [("body.image", "data_url_not_base64")]

    missing = problem(client.post("/v1/detect", json={}, headers=H), 422, "validation_error")
    assert fields(missing) == [("body.image", "missing")]
    wrong = client.post("/v1/identify", json={"image": photo, "top_k": "3", "largest_only": 1}, headers=H)
    assert sorted(fields(problem(wrong, 422, "validation_error"))) == [
        ("body.largest_only", "bool_type"),
        ("body.top_k", "int_type"),
    ]
    extra = client.post("/v1/embed", json={"image": photo, "images": [photo]}, headers=H)
    assert fields(problem(extra, 422, "validation_error")) == [("body.images", "extra_forbidden")]
    assert fields(problem(client.post("/v1/embed", json=[photo], headers=H), 422, "validation_error")) == [
        ("body", "model_type")
    ]
    empty_list = client.post(
        f"/v1/subjects/{enrolled.subject_ids[johns[0].name]}/faces", json={"images": []}, headers=H
    )
    assert fields(problem(empty_list, 422, "validation_error")) == [("body.images", "too_short")]
    malformed = client.post(
        "/v1/detect", content=b'{"image": ', headers={**H, "content-type": "application/json"}
    )
    problem(malformed, 400, "malformed_json")
    text = client.post("/v1/detect", content=b"image=abc", headers={**H, "content-type": "text/plain"})
    assert fields(problem(text, 415, "unsupported_media_type")) == [("header.content-type", None)]

    # What the decoder refuses reads the same from either body: the field, status and code.
    for data in (b"hello, not an image", b""):
        as_json = client.post("/v1/detect", json={"image": base64.b64encode(data).decode()}, headers=H)
        multipart = client.post("/v1/detect", files=[("image", ("x", data, "image/jpeg"))], headers=H)
        same_problem(as_json, multipart)
        assert fields(as_json.json())[0][0] == "image"
    combination = client.post("/v1/verify", json={"image_a": photo}, headers=H)
    same_problem(
        combination, client.post("/v1/verify", files=[upload_file(johns[0].probes[0], "image_a")], headers=H)
    )
    problem(combination, 422, "invalid_verify_request")


def test_json_images_meet_the_multipart_limits(enrolled: Enrolled) -> None:
    client = enrolled.client
    too_big = bytes(MAX_IMAGE_BYTES + 1)  # one byte over FACE_MAX_IMAGE_BYTES
    multipart = client.post("/v1/embed", files=[("image", ("big.jpg", too_big, "image/jpeg"))], headers=H)
    as_json = client.post("/v1/embed", json={"image": base64.b64encode(too_big).decode()}, headers=H)
    same_problem(as_json, multipart)
    assert fields(problem(as_json, 413, "too_large")) == [("image", "too_large")]

    # Text longer than any image within the limit: refused by its length, never decoded.
    longest = max_base64_chars(MAX_IMAGE_BYTES)
    too_long = problem(
        client.post("/v1/embed", json={"image": "A" * (longest + 1)}, headers=H), 413, "too_large"
    )
    assert fields(too_long) == [("image", "too_large")]
    assert str(longest) in too_long["detail"]

    # The request body limit holds for JSON as for multipart (FACE_MAX_REQUEST_BYTES).
    huge = "A" * MAX_REQUEST_BYTES
    for response in (
        client.post("/v1/detect", json={"image": huge}, headers=H),
        client.post("/v1/detect", files=[("image", ("huge.jpg", huge.encode(), "image/jpeg"))], headers=H),
    ):
        problem(response, 413, "content_too_large")


def test_identify_by_embedding_matches_identify(enrolled: Enrolled, johns: list[Person]) -> None:
    client = enrolled.client
    photo = johns[2].probes[0]
    embedded = ok(client.post("/v1/embed", json={"image": b64(photo)}, headers=H))
    (face,) = embedded["faces"]
    by_image = ok(client.post("/v1/identify", files=[upload_file(photo)], data={"top_k": "3"}, headers=H))
    (expected,) = by_image["faces"]
    query = {"embedding": face["embedding"], "pack_id": embedded["pack_id"], "top_k": 3}
    by_vector = ok(client.post("/v1/identify/embedding", json=query, headers=H))
    assert by_vector["threshold"] == by_image["threshold"]
    assert by_vector["top_k"] == 3
    assert by_vector["unknown"] is expected["unknown"] is False
    assert [c["subject_id"] for c in by_vector["candidates"]] == [
        c["subject_id"] for c in expected["candidates"]
    ]
    assert by_vector["candidates"][0]["subject_id"] == enrolled.subject_ids[johns[2].name]
    for mine, theirs in zip(by_vector["candidates"], expected["candidates"], strict=True):
        assert mine["similarity"] == pytest.approx(theirs["similarity"], abs=1e-5)
        assert mine["face_id"] == theirs["face_id"]

    # Any length: normalized here. The threshold and top_k work as identify's.
    scaled = {**query, "embedding": [3.5 * v for v in face["embedding"]], "top_k": 1}
    (top,) = ok(client.post("/v1/identify/embedding", json=scaled, headers=H))["candidates"]
    assert top["similarity"] == pytest.approx(expected["candidates"][0]["similarity"], abs=1e-5)
    strict = ok(client.post("/v1/identify/embedding?threshold=0.9999", json=query, headers=H))
    assert strict["threshold"] == {"name": "custom", "value": 0.9999}
    assert strict["unknown"] is True
    assert strict["candidates"] == []


def test_identify_by_embedding_refusals(enrolled: Enrolled) -> None:
    client = enrolled.client
    info = ok(client.get("/v1/info", headers=H))
    size, pack_id = info["embedding_size"], info["pack_id"]
    vector = [1.0] + [0.0] * (size - 1)

    def search(**body: Any) -> httpx.Response:
        return client.post(
            "/v1/identify/embedding", json={"embedding": vector, "pack_id": pack_id, **body}, headers=H
        )

    assert ok(search())["top_k"] == 5  # FACE_IDENTIFY_TOP_K's default, as identify's
    other_pack = problem(search(pack_id="dlib-r34-00000000"), 409, "pack_mismatch")
    assert fields(other_pack) == [("body.pack_id", "pack_mismatch")]
    assert pack_id in other_pack["detail"]
    short = problem(search(embedding=vector[:-1]), 422, "wrong_length")
    assert fields(short) == [("body.embedding", "wrong_length")]
    assert str(size) in short["detail"]
    assert fields(problem(search(embedding=[0.0] * size), 422, "zero_vector")) == [
        ("body.embedding", "zero_vector")
    ]
    for token in ("NaN", "Infinity", "1e400"):  # Python's JSON reads these as floats; none is searchable
        values = ", ".join([token] + ["0.0"] * (size - 1))
        raw = f'{{"embedding": [{values}], "pack_id": "{pack_id}"}}'
        response = client.post(
            "/v1/identify/embedding", content=raw.encode(), headers={**H, "content-type": "application/json"}
        )
        assert fields(problem(response, 422, "not_finite")) == [("body.embedding", "not_finite")]
    as_text = problem(search(embedding=["0.5"] * size), 422, "validation_error")
    assert fields(as_text)[0] == ("body.embedding.0", "float_type")
    assert fields(problem(search(top_k=0), 422, "validation_error")) == [("body.top_k", "greater_than_equal")]


def test_the_openapi_document_lists_both_bodies(enrolled: Enrolled) -> None:
    paths = ok(enrolled.client.get("/openapi.json"))["paths"]
    image_fields = {
        "/v1/detect": "image",
        "/v1/embed": "image",
        "/v1/verify": "image_a",
        "/v1/identify": "image",
        "/v1/subjects/{subject_id}/faces": "images",
    }
    for path, field in image_fields.items():
        operation = paths[path]["post"]
        content = operation["requestBody"]["content"]
        assert set(content) == {"multipart/form-data", "application/json"}, path
        form, as_json = (content[t]["schema"]["properties"][field] for t in content)
        assert "contentMediaType" in json.dumps(form), path  # a file upload
        assert "base64" in json.dumps(as_json), path  # text, and says what text
        assert content["application/json"]["schema"]["additionalProperties"] is False
        assert content["application/json"]["schema"]["examples"], path
        assert {"413", "415", "422"} <= set(operation["responses"]), path
    by_embedding = paths["/v1/identify/embedding"]["post"]
    assert set(by_embedding["requestBody"]["content"]) == {"application/json"}
    assert {"200", "409", "422"} <= set(by_embedding["responses"])
