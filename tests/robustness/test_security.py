"""Security properties, checked against the running app (routes enumerated from the app itself).

- every route except /healthz, /readyz, /metrics (and the API description: /openapi.json, /docs,
  /redoc; the web console's files under /ui) refuses a missing, unknown, malformed or revoked key
  with 401, and a key without the needed scope with 403;
- keys are stored only as SHA-256 hashes (the data dir, WAL included, never holds a key);
- key checks compare fixed-length hashes with ``hmac.compare_digest``, and their timing does not
  depend on how much of a key's prefix is right;
- at DEBUG, a full scenario's server log holds no key, no image bytes and no embedding;
- path-like pack names, subject/face/key ids and upload file names never reach outside the data or
  models directory;
- request body, image size, pixel and image-count limits hold (413), and ``FACE_MAX_FACES`` caps faces.
"""

from __future__ import annotations

import base64
import io
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from benchmarks.local_server import LocalServer
from service.api.errors import PROBLEM_MEDIA_TYPE
from service.auth import keys as keys_module
from service.auth.authenticator import Authenticator
from service.auth.keys import Scope, SqliteKeyStore, hash_key
from service.packs.files import PackError
from service.packs.loader import resolve_pack_dir
from service.settings import DEFAULT_COLLECTION, Settings
from tests.api.conftest import ADMIN_KEY, admin_headers, running_app
from tests.robustness.conftest import ServerFactory

PUBLIC_PATHS = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/ui",  # the web console's files (redirected to /ui/): no data; every call they make needs a key
}
SOME_ID = "0f0e0d0c-0b0a-4908-8706-050403020100"
TRAVERSALS = (
    "../../etc/passwd",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc",
    "..\\..\\windows\\win.ini",
    "....//....//etc",
    "%00../../etc",
)
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory, default_pack_dir: Path) -> Iterator[TestClient]:
    with running_app(tmp_path_factory.mktemp("security"), default_pack_dir) as client:
        yield client


@pytest.fixture(scope="module")
def scoped_keys(app_client: TestClient) -> dict[str, str]:
    """One key per single scope, plus a revoked one, created through the API."""
    made = {}
    for scope in ("read", "enroll", "admin"):
        response = app_client.post("/v1/keys", json={"scopes": [scope]}, headers=admin_headers())
        assert response.status_code == 201
        made[scope] = response.json()["key"]
    revoked = app_client.post("/v1/keys", json={"scopes": ["admin"]}, headers=admin_headers()).json()
    assert app_client.delete(f"/v1/keys/{revoked['id']}", headers=admin_headers()).status_code == 200
    made["revoked"] = revoked["key"]
    return made


def routes_of(client: TestClient) -> list[tuple[str, str]]:
    """(method, concrete path) for every route the app serves, path parameters filled in."""
    found: list[tuple[str, str]] = []
    # iter_route_contexts walks included routers (FastAPI keeps them as nested router objects).
    for route in iter_route_contexts(client.app.routes):  # type: ignore[attr-defined]
        if route.path is None:
            continue
        # /v1/collections/{collection}/...: the default collection's name (an unknown one is a 404).
        path = re.sub(r"\{[^}]+\}", SOME_ID, route.path.replace("{collection}", DEFAULT_COLLECTION))
        found.extend((method, path) for method in sorted(route.methods or ()) if method != "HEAD")
    return found


def _assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    assert response.json()["type"].endswith(f":{code}")


# ------------------------------------------------------------------------------------------- keys


def test_only_health_metrics_and_docs_are_public(app_client: TestClient, scoped_keys: dict[str, str]) -> None:
    wrong = {
        "unknown key of our format": {"X-API-Key": "fsk_0123456789ab_" + "A" * 43},
        "admin key with a wrong secret": {"X-API-Key": scoped_keys["admin"][:-1] + "x"},
        "garbage": {"X-API-Key": "' OR 1=1 --"},
        "bearer garbage": {"Authorization": "Bearer not-a-key"},
        "revoked key": {"X-API-Key": scoped_keys["revoked"]},
        "basic auth": {"Authorization": "Basic " + base64.b64encode(ADMIN_KEY.encode()).decode()},
    }
    public = set()
    routes = routes_of(app_client)
    assert len(routes) >= 19
    for method, path in routes:
        anonymous = app_client.request(method, path)
        if anonymous.status_code != 401:
            public.add(path)
            continue
        _assert_problem(anonymous, 401, "missing_api_key")
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        for label, headers in wrong.items():
            refused = app_client.request(method, path, headers=headers)
            assert refused.status_code == 401, f"{method} {path} accepted a {label}"
            # A scheme other than Bearer carries no key at all: "missing" rather than "invalid".
            assert refused.json()["type"].rsplit(":", 1)[-1] in {"invalid_api_key", "missing_api_key"}
    assert public == PUBLIC_PATHS


def test_every_protected_route_checks_its_scope(app_client: TestClient, scoped_keys: dict[str, str]) -> None:
    accepted_by: dict[tuple[str, str], set[str]] = {}
    for method, path in routes_of(app_client):
        if path in PUBLIC_PATHS:
            continue
        admin = app_client.request(method, path, headers={"X-API-Key": scoped_keys["admin"]})
        assert admin.status_code not in {401, 403}, f"admin refused on {method} {path}"
        accepted = set()
        for scope in ("read", "enroll"):
            response = app_client.request(method, path, headers={"X-API-Key": scoped_keys[scope]})
            if response.status_code == 403:
                _assert_problem(response, 403, "insufficient_scope")
            else:
                assert response.status_code != 401
                accepted.add(scope)
        accepted_by[(method, path)] = accepted
    for (method, collection_path), accepted in accepted_by.items():
        path = re.sub(r"^/v1/collections/[^/]+/", "/v1/", collection_path)  # the same scopes as /v1/...
        if path == "/v1/keys/me":  # the caller's own key: any valid key may ask
            assert accepted == {"read", "enroll"}, (method, path, accepted)
        elif path.startswith(("/v1/keys", "/v1/gallery")):  # keys, whole-gallery export/import
            assert accepted == set(), f"{method} {path} must need admin"
        elif path.startswith(("/v1/subjects", "/v1/faces")):  # the gallery: reads vs writes
            assert accepted == ({"read"} if method == "GET" else {"enroll"}), (method, path, accepted)
        else:  # inference and info
            assert accepted == {"read"}, (method, path, accepted)


def _all_bytes(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file())


def test_keys_are_stored_hashed(tmp_path: Path, default_pack_dir: Path) -> None:
    data_dir = tmp_path / "data"
    with running_app(data_dir, default_pack_dir) as client:
        created = client.post("/v1/keys", json={"scopes": ["read"], "name": "kiosk"}, headers=admin_headers())
        key = created.json()["key"]
        assert client.get("/v1/info", headers={"X-API-Key": key}).status_code == 200
        from_cli = SqliteKeyStore.in_data_dir(data_dir).create(frozenset({Scope.ENROLL}), name="cli").key
        stored = _all_bytes(data_dir)  # while the server runs: WAL and shm files included
    stored += _all_bytes(data_dir)
    for secret in (key, from_cli, ADMIN_KEY):
        assert secret.encode() not in stored
        # Not even the random part (fsk_<key id>_<secret>; the secret itself may contain "_").
        random_part = secret.split("_", 2)[2] if secret.startswith("fsk_") else secret
        assert random_part.encode() not in stored
    assert hash_key(key).encode() in stored
    assert hash_key(from_cli).encode() in stored
    assert hash_key(ADMIN_KEY).encode() not in stored  # FACE_API_KEY is never written at all


def test_key_checks_compare_fixed_length_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    stored_key = store.create(frozenset({Scope.READ})).key
    explicit = "explicit-admin-key-" + "k" * 40
    authenticator = Authenticator(store, explicit_key_sha256=hash_key(explicit), enabled=True)
    compared: list[tuple[object, object]] = []
    real_compare = keys_module.hmac.compare_digest

    def recording_compare(a: str, b: str) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", recording_compare)
    presented = [explicit, stored_key, stored_key[:-1], stored_key + "x", "x", explicit[:5], "é" * 300]
    results = [authenticator.authenticate(key) for key in presented]
    assert [r is not None for r in results] == [True, True, False, False, False, False, False]
    assert len(compared) >= len(presented)  # every key with content met at least one comparison
    for a, b in compared:
        assert isinstance(a, str)
        assert isinstance(b, str)
        assert re.fullmatch(r"[0-9a-f]{64}", a)
        assert re.fullmatch(r"[0-9a-f]{64}", b)


def _median_batch_seconds(
    check: Callable[[str], object], keys: list[str], rounds: int, batch: int
) -> list[float]:
    """Median time of a batch of checks per key, rounds interleaved so that machine noise is shared."""
    timings: list[list[float]] = [[] for _ in keys]
    for _ in range(rounds):
        for slot, key in enumerate(keys):
            started = time.perf_counter()
            for _ in range(batch):
                check(key)
            timings[slot].append(time.perf_counter() - started)
    return [statistics.median(values) for values in timings]


def test_key_check_timing_does_not_depend_on_the_matched_prefix(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    stored_key = store.create(frozenset({Scope.READ})).key
    # Not in the stored keys' format, so that no flip below makes it look up the store.
    explicit = "explicit-admin-" + "s" * 48
    authenticator = Authenticator(store, explicit_key_sha256=hash_key(explicit), enabled=True)

    def flip(key: str, position: int) -> str:
        return key[:position] + ("A" if key[position] != "A" else "B") + key[position + 1 :]

    # Explicit key (hash comparison only): wrong at the first character vs only at the last.
    env_times = _median_batch_seconds(
        authenticator.authenticate,
        [flip(explicit, 0), flip(explicit, len(explicit) - 1)],
        rounds=30,
        batch=300,
    )
    # Stored key: right key id; secret wrong at its first character vs only at its last.
    secret_start = len(stored_key) - 43
    store_times = _median_batch_seconds(
        authenticator.authenticate,
        [flip(stored_key, secret_start), flip(stored_key, len(stored_key) - 1)],
        rounds=15,
        batch=20,
    )
    for early, late in (env_times, store_times):
        # A prefix-sensitive comparison would make "late" consistently slower; allow generous noise.
        assert 0.7 < late / early < 1.4, (early, late)


# ------------------------------------------------------------------------------------------- logs


def test_debug_logs_hold_no_keys_images_or_embeddings(make_server: ServerFactory, shared_faces: Path) -> None:
    server: LocalServer = make_server("logged", FACE_LOG_LEVEL="debug")
    server.start()
    johns = sorted((shared_faces / "dlib_johns" / "John_Simm").glob("*.jpg"))
    other = sorted((shared_faces / "dlib_johns" / "John_Savage").glob("*.jpg"))[0]
    photo = johns[0].read_bytes()
    admin = {"X-API-Key": server.api_key}
    wrong_key = "fsk_0123456789ab_" + "W" * 43
    with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
        created = client.post("/v1/keys", json={"scopes": ["read", "enroll"]}, headers=admin).json()["key"]
        user = {"X-API-Key": created}
        subject = client.post(
            "/v1/subjects", json={"name": "Simm", "metadata": {"k": "v"}}, headers=user
        ).json()
        enrolled = client.post(
            f"/v1/subjects/{subject['id']}/faces",
            files=[("images", (p.name, p.read_bytes(), "image/jpeg")) for p in johns[:3]],
            headers=user,
        )
        assert enrolled.status_code == 201
        embedding = client.post("/v1/embed", files={"image": ("a.jpg", photo)}, headers=user).json()
        vector = embedding["faces"][0]["embedding"]
        assert client.post("/v1/detect", files={"image": ("a.jpg", photo)}, headers=user).status_code == 200
        assert client.post("/v1/identify", files={"image": ("a.jpg", photo)}, headers=user).status_code == 200
        pair = {"image_a": ("a.jpg", photo), "image_b": ("b.jpg", other.read_bytes())}
        assert client.post("/v1/verify", files=pair, headers=user).status_code == 200
        by_subject = client.post(
            "/v1/verify", files={"image": ("a.jpg", photo)}, data={"subject_id": subject["id"]}, headers=user
        )
        assert by_subject.status_code == 200
        assert client.get("/v1/info", headers={"X-API-Key": wrong_key}).status_code == 401
        assert client.get("/v1/info", headers={"Authorization": f"Bearer {wrong_key}"}).status_code == 401
        assert client.post("/v1/detect", files={"image": ("x", photo[:500])}, headers=user).status_code == 422
        assert client.get("/v1/keys", headers=user).status_code == 403
        assert client.delete(f"/v1/subjects/{subject['id']}", headers=user).status_code == 204
    assert server.stop() == 0
    log = server.log_text()
    assert " DEBUG " in log, "the server did not log at DEBUG"
    assert "/v1/verify" in log  # the access log is there

    for secret in (server.api_key, created, wrong_key):
        assert secret not in log
        assert secret[-20:] not in log
    for start in (0, 200, len(photo) // 2):
        chunk = photo[start : start + 24]
        for form in (
            chunk.hex(),
            base64.b64encode(chunk).decode(),
            repr(chunk)[2:-1],
            chunk.decode("latin-1"),
        ):
            assert form not in log, f"image bytes at {start} appear in the log"
    assert "JFIF" not in log
    assert "\\xff\\xd8" not in log
    for value in vector[:32]:
        assert repr(value) not in log, "an embedding value appears in the log"
        assert f"{value:.6f}" not in log


# ------------------------------------------------------------------------------------------- paths


def test_path_like_pack_names_are_refused(tmp_path: Path) -> None:
    for name in ("../../etc", "..", "/etc", "a/../../b", "default/../../x", ".hidden", "x" * 65):
        with pytest.raises(ValidationError):
            Settings(pack=name, models_dir=tmp_path)
        with pytest.raises(PackError):
            resolve_pack_dir(tmp_path, name)
    env = {key: value for key, value in os.environ.items() if not key.startswith("FACE_")}
    serve = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        env={**env, "FACE_PACK": "../../etc", "FACE_DATA_DIR": str(tmp_path / "d")},
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert serve.returncode == 1
    assert "invalid settings: FACE_PACK" in serve.stderr
    assert "Traceback" not in serve.stderr
    reembed = subprocess.run(
        [sys.executable, "-m", "service.cli", "reembed", "--pack", "../../etc"],
        env={**env, "FACE_DATA_DIR": str(tmp_path / "d"), "FACE_MODELS_DIR": str(tmp_path / "m")},
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert reembed.returncode == 1
    assert "invalid pack name '../../etc'" in reembed.stderr


def _tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def test_path_like_ids_and_file_names_stay_inside(
    tmp_path: Path, default_pack_dir: Path, shared_faces: Path
) -> None:
    data_dir = tmp_path / "data"
    photo = sorted((shared_faces / "dlib_johns" / "John_Simm").glob("*.jpg"))[0].read_bytes()
    escape_target = tmp_path / "escaped.jpg"
    models_before = _tree(default_pack_dir.parent)
    with running_app(data_dir, default_pack_dir) as client:
        h = admin_headers()
        subject = client.post(
            "/v1/subjects", json={"name": "../../etc/passwd", "metadata": {"p": "/etc"}}, headers=h
        )
        assert subject.status_code == 201
        assert (
            client.get(f"/v1/subjects/{subject.json()['id']}", headers=h).json()["name"] == "../../etc/passwd"
        )
        enrolled = client.post(
            f"/v1/subjects/{subject.json()['id']}/faces",
            files={"images": (f"../../../../../../..{escape_target}", photo, "image/jpeg")},
            headers=h,
        )
        assert enrolled.status_code == 201
        for value in TRAVERSALS:
            attempts = [
                ("GET", f"/v1/subjects/{value}"),
                ("PATCH", f"/v1/subjects/{value}"),
                ("DELETE", f"/v1/subjects/{value}"),
                ("GET", f"/v1/subjects/{value}/faces"),
                ("POST", f"/v1/subjects/{value}/faces"),
                ("DELETE", f"/v1/faces/{value}"),
                ("DELETE", f"/v1/keys/{value}"),
            ]
            for method, path in attempts:
                kwargs: dict[str, object] = {}
                if method == "PATCH":
                    kwargs["json"] = {"name": "x"}
                if method == "POST":
                    kwargs["files"] = {"images": ("a.jpg", photo, "image/jpeg")}
                response = client.request(method, path, headers=h, **kwargs)  # type: ignore[arg-type]
                assert response.status_code in {404, 405, 422}, (method, path, response.status_code)
                assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
            verify = client.post(
                "/v1/verify", files={"image": ("a.jpg", photo)}, data={"subject_id": value}, headers=h
            )
            assert verify.status_code in {404, 422}
        # Only the gallery's and the key store's own files, in the data dir; nothing anywhere else.
        data_after = _tree(data_dir)
    assert not escape_target.exists()
    known = {"gallery.sqlite3", "gallery.lock", "api_keys.sqlite3"}
    assert {path.removesuffix("-wal").removesuffix("-shm") for path in data_after} <= known
    assert _tree(tmp_path) - {"data"} - {f"data/{p}" for p in data_after} == set()
    assert _tree(default_pack_dir.parent) == models_before


# ------------------------------------------------------------------------------------------- limits


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _group_photo() -> bytes:
    """insightface's sample photo (six faces), downsized to fit the limits below."""
    data = (resources.files("insightface") / "data" / "images" / "t1.jpg").read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("RGB").resize((640, 443), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_request_image_and_face_count_limits(
    make_server: ServerFactory, shared_faces: Path, app_client: TestClient
) -> None:
    server = make_server(
        "limited",
        FACE_MAX_REQUEST_BYTES=str(256 * 1024),
        FACE_MAX_IMAGE_BYTES=str(96 * 1024),
        FACE_MAX_IMAGE_PIXELS=str(300_000),
        FACE_MAX_IMAGES_PER_REQUEST="3",
        FACE_MAX_FACES="2",
    )
    server.start()
    johns = sorted((shared_faces / "dlib_johns" / "John_Simm").glob("*.jpg"))
    noise = np.random.default_rng(0).integers(0, 256, (190, 190, 3), dtype=np.uint8)
    big_file = _png(Image.fromarray(noise))  # ~108 KB: over the image limit, under the request limit
    assert 96 * 1024 < len(big_file) < 200 * 1024
    many_pixels = _png(Image.new("RGB", (600, 600), (128, 128, 128)))  # 360,000 px in a few KB
    group = _group_photo()
    assert len(group) < 96 * 1024
    h = {"X-API-Key": server.api_key}
    with httpx.Client(base_url=server.base_url, headers=h, timeout=60.0) as client:
        declared = client.post("/v1/detect", files={"image": ("big.bin", os.urandom(300 * 1024))})
        _assert_problem(declared, 413, "content_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
            for _ in range(6):
                yield b"\0" * (64 * 1024)

        streamed = client.post("/v1/subjects", content=chunks(), headers={"Content-Type": "application/json"})
        _assert_problem(streamed, 413, "content_too_large")

        _assert_problem(client.post("/v1/detect", files={"image": ("n.png", big_file)}), 413, "too_large")
        _assert_problem(
            client.post("/v1/detect", files={"image": ("p.png", many_pixels)}), 413, "too_many_pixels"
        )

        subject = client.post("/v1/subjects", json={"name": "limits"}).json()
        four = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in johns[:4]]
        _assert_problem(
            client.post(f"/v1/subjects/{subject['id']}/faces", files=four), 413, "too_many_images"
        )
        assert client.get(f"/v1/subjects/{subject['id']}").json()["face_count"] == 0
        three = four[:3]
        assert client.post(f"/v1/subjects/{subject['id']}/faces", files=three).status_code == 201

        capped = client.post("/v1/detect", files={"image": ("group.jpg", group)})
        assert capped.status_code == 200
        assert len(capped.json()["faces"]) == 2
        third = client.post(
            "/v1/verify",
            files={"image_a": ("g.jpg", group), "image_b": ("g.jpg", group)},
            data={"face_index_a": "2"},
        )
        _assert_problem(third, 422, "face_index_out_of_range")
    uncapped = app_client.post("/v1/detect", files={"image": ("group.jpg", group)}, headers=admin_headers())
    assert len(uncapped.json()["faces"]) > 2  # the same photo, default FACE_MAX_FACES
    assert server.stop() == 0
