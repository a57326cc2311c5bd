"""Every bad input gets the right 4xx with an RFC 7807 body; keys and scopes are enforced."""

from __future__ import annotations

import io
import logging
import re
import struct
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.api.conftest import ADMIN_KEY, Person, admin_headers, jpeg_bytes, png_bytes, running_app

H = admin_headers()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, default_pack_dir: Path) -> Iterator[TestClient]:
    with running_app(tmp_path_factory.mktemp("errors"), default_pack_dir) as running:
        yield running


@pytest.fixture(scope="module")
def subject_id(client: TestClient) -> str:
    response = client.post("/v1/subjects", json={"name": "errors-subject"}, headers=H)
    assert response.status_code == 201
    return str(response.json()["id"])


def _problem(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert set(body) == {"type", "title", "status", "detail", "instance", "request_id", "errors"}
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["detail"]
    if code is not None:
        assert body["type"].endswith(f":{code}"), body
    return body


def _huge_png(width: int, height: int) -> bytes:
    """A real PNG whose header declares ``width × height`` (a decompression bomb's header)."""
    data = bytearray(png_bytes(Image.new("RGB", (1, 1))))
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def _faceless_jpeg() -> bytes:
    """A smooth colour gradient: a valid photo-sized image with no face in it."""
    ramp = np.linspace(0, 255, 320, dtype=np.float32)
    rgb = np.stack(
        [np.tile(ramp, (240, 1)), np.tile(ramp[:240, None], (1, 320)), np.full((240, 320), 90.0)], -1
    )
    return jpeg_bytes(Image.fromarray(rgb.astype(np.uint8)))


def _image(name: str, data: bytes, field: str = "image") -> tuple[str, tuple[str, bytes, str]]:
    return field, (name, data, "application/octet-stream")


# --- images


def test_not_an_image_is_415(client: TestClient) -> None:
    body = _problem(
        client.post("/v1/detect", files=[_image("a.txt", b"hello, not an image")], headers=H), 415
    )
    assert body["errors"][0]["field"] == "image"


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [(b"\x00", 415, "not_an_image"), (b"ab", 415, "not_an_image"), (b"BM", 422, "truncated")],
)
def test_a_few_bytes(client: TestClient, data: bytes, status: int, code: str) -> None:
    _problem(client.post("/v1/detect", files=[_image("tiny", data)], headers=H), status, code)


def test_truncated_jpeg_is_422(client: TestClient, johns: list[Person]) -> None:
    data = johns[0].probes[0].read_bytes()
    body = _problem(
        client.post("/v1/detect", files=[_image("cut.jpg", data[: len(data) // 2])], headers=H),
        422,
        "truncated",
    )
    assert body["errors"][0]["code"] == "truncated"


def test_huge_dimensions_are_refused_before_decoding(client: TestClient) -> None:
    response = client.post("/v1/identify", files=[_image("bomb.png", _huge_png(60_000, 60_000))], headers=H)
    _problem(response, 413, "too_many_pixels")


def test_empty_file_is_422(client: TestClient) -> None:
    _problem(client.post("/v1/embed", files=[_image("empty.jpg", b"")], headers=H), 422, "empty")


def test_zero_faces(client: TestClient, subject_id: str) -> None:
    faceless = _faceless_jpeg()
    assert client.post("/v1/detect", files=[_image("g.jpg", faceless)], headers=H).json()["faces"] == []
    assert client.post("/v1/identify", files=[_image("g.jpg", faceless)], headers=H).json()["faces"] == []
    body = _problem(
        client.post(
            "/v1/verify",
            files=[_image("a.jpg", faceless, "image_a"), _image("b.jpg", faceless, "image_b")],
            headers=H,
        ),
        422,
        "no_face",
    )
    assert body["errors"][0]["field"] in {"image_a", "image_b"}
    body = _problem(
        client.post(
            f"/v1/subjects/{subject_id}/faces", files=[_image("g.jpg", faceless, "images")], headers=H
        ),
        422,
        "no_face_accepted",
    )
    assert body["errors"] == [
        {"field": "images[0]", "reason": "no face found in the image", "code": "no_face"}
    ]
    assert client.get(f"/v1/subjects/{subject_id}", headers=H).json()["face_count"] == 0


def test_enrollment_commits_accepted_images_and_reports_the_rest(
    client: TestClient, subject_id: str, johns: list[Person]
) -> None:
    good = johns[1].enroll[0].read_bytes()
    response = client.post(
        f"/v1/subjects/{subject_id}/faces",
        files=[
            _image("good.jpg", good, "images"),
            _image("none.jpg", _faceless_jpeg(), "images"),
            _image("junk.bin", b"\x00" * 100, "images"),
        ],
        headers=H,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (1, 2)
    results = body["results"]
    assert results[0]["accepted"]
    assert results[0]["face_id"]
    assert results[1]["rejection"]["code"] == "no_face"
    assert results[2]["rejection"]["code"] == "invalid_image"
    faces = client.get(f"/v1/subjects/{subject_id}/faces", headers=H).json()["faces"]
    assert [face["id"] for face in faces] == [results[0]["face_id"]]
    assert client.delete(f"/v1/faces/{results[0]['face_id']}", headers=H).status_code == 204


def test_two_people_in_one_image_are_refused_for_enrollment(
    client: TestClient, subject_id: str, johns: list[Person]
) -> None:
    pair = Image.new("RGB", (300, 150))
    pair.paste(Image.open(johns[0].probes[0]).convert("RGB"), (0, 0))
    pair.paste(Image.open(johns[1].probes[0]).convert("RGB"), (150, 0))
    files = [_image("pair.jpg", jpeg_bytes(pair), "images")]
    body = _problem(client.post(f"/v1/subjects/{subject_id}/faces", files=files, headers=H), 422)
    assert [error["code"] for error in body["errors"]] == ["multiple_faces"]
    detected = client.post("/v1/detect", files=[_image("pair.jpg", jpeg_bytes(pair))], headers=H).json()
    assert len(detected["faces"]) == 2


def test_face_index_out_of_range(client: TestClient, johns: list[Person]) -> None:
    data = johns[0].probes[0].read_bytes()
    body = _problem(
        client.post(
            "/v1/verify",
            files=[_image("a.jpg", data, "image_a"), _image("b.jpg", data, "image_b")],
            data={"face_index_b": "3"},
            headers=H,
        ),
        422,
        "face_index_out_of_range",
    )
    assert body["errors"][0]["field"] == "face_index_b"


# --- request shape


def test_missing_field_is_422_naming_it(client: TestClient) -> None:
    body = _problem(client.post("/v1/detect", headers=H), 422, "validation_error")
    assert {"field": "body.image", "reason": "Field required", "code": "missing"} in body["errors"]
    body = _problem(client.post("/v1/subjects", json={}, headers=H), 422)
    assert any(error["field"] == "body.name" for error in body["errors"])


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/v1/subjects", content=b'{"name": "x", ', headers={**H, "content-type": "application/json"}
    )
    _problem(response, 400, "malformed_json")


def test_unexpected_fields_and_bad_values_are_422(client: TestClient, subject_id: str) -> None:
    _problem(client.post("/v1/subjects", json={"name": "x", "extra": 1}, headers=H), 422)
    _problem(client.patch(f"/v1/subjects/{subject_id}", json={}, headers=H), 422)
    _problem(client.get("/v1/subjects", params={"limit": 0}, headers=H), 422)
    _problem(client.get("/v1/subjects", params={"cursor": "not-a-cursor"}, headers=H), 422, "invalid_cursor")


def test_invalid_verify_combinations_and_thresholds(client: TestClient, johns: list[Person]) -> None:
    data = johns[0].probes[0].read_bytes()
    _problem(client.post("/v1/verify", files=[_image("a.jpg", data, "image_a")], headers=H), 422)
    _problem(
        client.post("/v1/verify", files=[_image("a.jpg", data)], data={"subject_id": ""}, headers=H), 422
    )
    for bad in ("far=banana", "1.5", "nan"):
        body = _problem(
            client.post(
                "/v1/verify",
                files=[_image("a.jpg", data, "image_a"), _image("b.jpg", data, "image_b")],
                data={"threshold": bad},
                headers=H,
            ),
            422,
            "invalid_threshold",
        )
        assert body["errors"][0]["field"] == "threshold"


def test_unknown_subject_and_face_are_404(client: TestClient, johns: list[Person]) -> None:
    missing = str(uuid.uuid4())
    _problem(client.get(f"/v1/subjects/{missing}", headers=H), 404, "subject_not_found")
    _problem(client.patch(f"/v1/subjects/{missing}", json={"name": "n"}, headers=H), 404)
    _problem(client.delete(f"/v1/subjects/{missing}", headers=H), 404)
    _problem(client.get(f"/v1/subjects/{missing}/faces", headers=H), 404)
    files = [_image("a.jpg", johns[0].probes[0].read_bytes(), "images")]
    _problem(client.post(f"/v1/subjects/{missing}/faces", files=files, headers=H), 404)
    verify_files = [_image("a.jpg", johns[0].probes[0].read_bytes())]
    _problem(client.post("/v1/verify", files=verify_files, data={"subject_id": missing}, headers=H), 404)
    _problem(client.delete(f"/v1/faces/{missing}", headers=H), 404, "face_not_found")


def _methods_by_path(client: TestClient) -> dict[str, set[str]]:
    """Every path of the published OpenAPI schema with a concrete value for each path parameter, and
    the methods the schema lists for it: an expectation taken from the schema, not from the code that
    builds the ``Allow`` header (API routes answer HEAD only where they declare it)."""
    schema = client.get("/openapi.json").json()
    templates = {template: {method.upper() for method in ops} for template, ops in schema["paths"].items()}
    expected: dict[str, set[str]] = {}
    for template in templates:
        path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), template)
        # A literal path can also fill another one's parameter (/v1/keys/me is /v1/keys/{key_id} too):
        # it allows what every template it matches allows.
        expected[path] = set().union(*(m for other, m in templates.items() if _fills(other, path)))
    return expected


def _fills(template: str, path: str) -> bool:
    parts, segments = template.split("/"), path.split("/")
    return len(parts) == len(segments) and all(
        part == segment or part.startswith("{") for part, segment in zip(parts, segments, strict=True)
    )


_PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "BREW")


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    _problem(client.get("/v1/nothing-here", headers=H), 404, "not_found")
    response = client.put("/v1/subjects", headers=H)
    _problem(response, 405, "method_not_allowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "POST"}  # by hand


def test_every_405_lists_every_method_of_its_path(client: TestClient) -> None:
    expected = _methods_by_path(client)
    assert len(expected) >= 10  # the schema was read, not an empty one
    checked = 0
    for path, allowed in expected.items():
        for method in _PROBED_METHODS:
            if method in allowed:
                continue
            response = client.request(method, path, headers=H)
            if method == "HEAD":  # no body to a HEAD
                assert response.status_code == 405, (method, path)
            else:
                _problem(response, 405, "method_not_allowed")
            assert set(response.headers["allow"].split(", ")) == allowed, (method, path)
            checked += 1
    assert checked >= 3 * len(expected)


def test_verify_subject_without_faces_is_409(client: TestClient, johns: list[Person]) -> None:
    empty = client.post("/v1/subjects", json={"name": "nobody-enrolled"}, headers=H).json()["id"]
    files = [_image("a.jpg", johns[0].probes[0].read_bytes())]
    _problem(client.post("/v1/verify", files=files, data={"subject_id": empty}, headers=H), 409)


# --- auth


def test_missing_and_wrong_keys_are_401(client: TestClient) -> None:
    response = client.get("/v1/subjects")
    body = _problem(response, 401, "missing_api_key")
    assert "X-API-Key" in body["detail"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    _problem(client.get("/v1/subjects", headers={"X-API-Key": ADMIN_KEY + "x"}), 401, "invalid_api_key")
    _problem(client.get("/v1/info", headers={"Authorization": "Bearer nope"}), 401)
    assert client.get("/v1/info", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(open_path).status_code == 200


def test_scopes_are_enforced_and_revocation_is_immediate(client: TestClient, johns: list[Person]) -> None:
    read = client.post("/v1/keys", json={"name": "reader", "scopes": ["read"]}, headers=H)
    assert read.status_code == 201
    read_key = {"X-API-Key": read.json()["key"]}
    enroll = client.post("/v1/keys", json={"name": "enroller", "scopes": ["enroll"]}, headers=H).json()
    enroll_key = {"Authorization": f"Bearer {enroll['key']}"}

    assert client.get("/v1/subjects", headers=read_key).status_code == 200
    image = [_image("a.jpg", johns[0].probes[0].read_bytes())]
    assert client.post("/v1/detect", files=image, headers=read_key).status_code == 200
    _problem(client.post("/v1/subjects", json={"name": "x"}, headers=read_key), 403, "insufficient_scope")
    _problem(client.get("/v1/keys", headers=read_key), 403)

    created = client.post("/v1/subjects", json={"name": "by-enroller"}, headers=enroll_key)
    assert created.status_code == 201
    _problem(client.get("/v1/subjects", headers=enroll_key), 403)  # enroll does not imply read
    _problem(client.post("/v1/keys", json={"scopes": ["admin"]}, headers=enroll_key), 403)

    listed = client.get("/v1/keys", headers=H).json()["keys"]
    assert {"reader", "enroller"} <= {key["name"] for key in listed}
    assert all("key" not in key for key in listed)
    revoked = client.delete(f"/v1/keys/{read.json()['id']}", headers=H)
    assert revoked.status_code == 200
    assert revoked.json()["active"] is False
    _problem(client.get("/v1/subjects", headers=read_key), 401, "invalid_api_key")
    _problem(client.delete("/v1/keys/000000000000", headers=H), 404)
    _problem(client.post("/v1/keys", json={"scopes": ["root"]}, headers=H), 422)


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    echoed = client.get("/healthz", headers={"X-Request-ID": "trace-123"})
    assert echoed.headers["x-request-id"] == "trace-123"
    generated = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces\t"})
    assert generated.headers["x-request-id"] != "bad id with spaces\t"
    assert len(generated.headers["x-request-id"]) == 32
    assert _problem(client.get("/v1/nope", headers={"X-Request-ID": "r-404"}), 404)["request_id"] == "r-404"


def test_no_keys_or_image_bytes_in_logs(
    client: TestClient, johns: list[Person], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = client.post("/v1/keys", json={"scopes": ["read"]}, headers=H).json()["key"]
    client.get("/v1/subjects", headers={"X-API-Key": "wrong-secret-value-42"})
    client.post(
        "/v1/identify",
        files=[_image("a.jpg", johns[0].probes[0].read_bytes())],
        headers={"X-API-Key": created},
    )
    client.post("/v1/embed", files=[_image("t.jpg", b"\xff\xd8\xff\xe0 truncated")], headers=H)
    text = caplog.text
    for secret in (ADMIN_KEY, created, "wrong-secret-value-42"):
        assert secret not in text
    assert "\\xff\\xd8" not in text
    assert "JFIF" not in text
    assert all(len(record.getMessage()) < 2000 for record in caplog.records)


# --- limits and CORS (an app with a small request limit and CORS configured)


def test_request_size_limit_and_cors(tmp_path: Path, default_pack_dir: Path, johns: list[Person]) -> None:
    with running_app(
        tmp_path, default_pack_dir, max_request_bytes=64 * 1024, cors_origins=["https://app.example"]
    ) as small:
        big = io.BytesIO(b"\x00" * (100 * 1024)).getvalue()
        body = _problem(small.post("/v1/detect", files=[_image("big.jpg", big)], headers=H), 413)
        assert "exceeds" in body["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
            for _ in range(100):
                yield b"\x00" * 1024

        streamed = small.post(
            "/v1/subjects", content=chunks(), headers={**H, "content-type": "application/json"}
        )
        _problem(streamed, 413, "content_too_large")
        ok = small.post("/v1/detect", files=[_image("a.jpg", johns[0].probes[0].read_bytes())], headers=H)
        assert ok.status_code == 200

        preflight = small.options(
            "/v1/detect",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        other = small.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_no_cors_headers_unless_configured(client: TestClient) -> None:
    response = client.get("/healthz", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers


def test_a_repeated_query_parameter_is_422_naming_it(client: TestClient) -> None:
    # FastAPI would keep the last value; two cursors (or thresholds) are a question the API can't answer.
    response = client.get("/v1/subjects?cursor=&cursor=abc&limit=5", headers=H)
    body = _problem(response, 422, "repeated_parameter")
    assert [error["field"] for error in body["errors"]] == ["query.cursor"]
    assert client.get("/v1/subjects?cursor=&limit=5", headers=H).status_code == 200


def test_a_repeated_query_parameter_without_a_key_is_still_401(client: TestClient) -> None:
    _problem(client.get("/v1/subjects?cursor=&cursor=abc"), 401, "missing_api_key")
