"""Large JPEGs decoded in draft mode still give the same faces; the pixel budget bounds enrollment.

A real photo is upscaled to a ~36 Mpx JPEG (the issue's camera-sized upload). Enrollment decodes it
at a DCT reduction (``FACE_JPEG_DRAFT_MIN_SIDE``); the embedding of that face must match the full
decode's (same identity, cosine close). The budget tests run the real app with a tiny budget.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.packs.loader import load_pack
from service.pipeline.decode import decode_image
from service.pipeline.face_pipeline import FacePipeline
from service.pipeline.types import ImageArray
from service.settings import FacePolicy, Settings
from service.usecases.images import open_image_bytes
from tests.api.conftest import admin_headers, running_app

pytestmark = pytest.mark.slow
TARGET_PIXELS = 36_000_000
# (person, the photo upscaled to 36 Mpx, another photo of the same person)
PHOTOS = [
    ("Angelina", "img1.jpg", "img4.jpg"),
    ("Elon", "img18.jpg", "img19.jpg"),
    ("Mark", "img15.jpg", "img14.jpg"),
]


@pytest.fixture(scope="module")
def pipeline(default_pack_dir: Path) -> FacePipeline:
    settings = Settings(models_dir=default_pack_dir.parent, pack=default_pack_dir.name, device="cpu")
    return FacePipeline.from_pack(load_pack(default_pack_dir), settings)


def camera_sized_jpeg(path: Path) -> bytes:
    with Image.open(path) as source:
        rgb = source.convert("RGB")
    scale = (TARGET_PIXELS / (rgb.width * rgb.height)) ** 0.5
    big = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def chosen_embedding(pipeline: FacePipeline, image: ImageArray) -> np.ndarray:
    faces, index = pipeline.detect_chosen(image, FacePolicy.CENTRE)
    assert index is not None, "no face"
    (aligned,) = pipeline.align_and_assess(image, [faces[index]])
    return pipeline.embed_chips_sync([aligned.chip])[0]


@pytest.mark.parametrize(("person", "large", "other"), PHOTOS)
def test_a_draft_decoded_36_mpx_photo_gives_the_same_face(
    pipeline: FacePipeline, default_pack_dir: Path, shared_faces: Path, person: str, large: str, other: str
) -> None:
    folder = shared_faces / "deepface_testset" / person
    data = camera_sized_jpeg(folder / large)
    settings = Settings()  # the defaults: draft to >= max(1280, 2 × det_input_size)
    full = decode_image(data, max_bytes=1 << 26, max_pixels=40_000_000)
    assert full.shape[0] * full.shape[1] >= 0.95 * TARGET_PIXELS
    with open_image_bytes(
        data, settings.model_copy(update={"max_image_bytes": 1 << 26}), draft=True
    ) as opened:
        drafted = opened.decode()
    longest = max(drafted.shape[:2])
    assert 2 * settings.det_input_size <= longest < 4 * settings.det_input_size  # 1/4: 7.3k → 1.8k
    assert drafted.size * 8 < full.size  # far fewer pixels held

    full_embedding = chosen_embedding(pipeline, full)
    drafted_embedding = chosen_embedding(pipeline, drafted)
    assert float(full_embedding @ drafted_embedding) >= 0.97
    with Image.open(folder / other) as reference:
        other_embedding = chosen_embedding(pipeline, np.asarray(reference.convert("RGB")))
    threshold = load_pack(default_pack_dir).manifest.calibration.operating_points["default"].threshold
    full_similarity = float(full_embedding @ other_embedding)
    drafted_similarity = float(drafted_embedding @ other_embedding)
    assert full_similarity >= threshold  # the same person ...
    assert drafted_similarity >= threshold  # ... still, from the reduced decode
    assert abs(full_similarity - drafted_similarity) <= 0.03


def _enroll(client, images: list[tuple[str, bytes]]):
    subject = client.post("/v1/subjects", json={"name": "budget"}, headers=admin_headers()).json()["id"]
    files = [("images", (name, data, "image/jpeg")) for name, data in images]
    return subject, client.post(f"/v1/subjects/{subject}/faces", files=files, headers=admin_headers())


def _johns(shared_faces: Path, count: int) -> list[tuple[str, bytes]]:
    paths = sorted((shared_faces / "dlib_johns" / "John_Simm").glob("*.jpg"))[:count]
    return [(path.name, path.read_bytes()) for path in paths]


def test_enrollment_over_a_full_budget_is_503_with_retry_after_and_stores_nothing(
    tmp_path: Path, default_pack_dir: Path, shared_faces: Path
) -> None:
    # Each 150×150 photo needs more than the whole budget: they run one at a time, and without any
    # wait allowed every image but the first finds the budget taken.
    with running_app(
        tmp_path, default_pack_dir, decode_pixel_budget=1024, decode_budget_wait_s=0.0
    ) as client:
        subject, response = _enroll(client, _johns(shared_faces, 8))
        assert response.status_code == 503, response.text
        assert response.json()["type"].endswith("busy")
        assert int(response.headers["retry-after"]) >= 1
        assert client.get(f"/v1/subjects/{subject}", headers=admin_headers()).json()["face_count"] == 0


def test_enrollment_within_a_tiny_budget_waits_and_enrolls_every_image(
    tmp_path: Path, default_pack_dir: Path, shared_faces: Path
) -> None:
    with running_app(
        tmp_path, default_pack_dir, decode_pixel_budget=1024, decode_budget_wait_s=120.0
    ) as client:
        subject, response = _enroll(client, _johns(shared_faces, 8))
        assert response.status_code == 201, response.text
        assert response.json()["accepted"] == 8
        assert client.get(f"/v1/subjects/{subject}", headers=admin_headers()).json()["face_count"] == 8


def test_single_image_routes_hold_the_budget_until_they_answer_and_then_release_it(
    tmp_path: Path, default_pack_dir: Path, shared_faces: Path
) -> None:
    # Budget of one (small) image, no waiting: while one /v1/embed decodes, detects and embeds, the
    # others find the budget taken (503 busy); every answer, an error one too, gives it back.
    photo = (shared_faces / "deepface_testset" / "Angelina" / "img1.jpg").read_bytes()
    blank = io.BytesIO()
    Image.new("RGB", (200, 200), (90, 140, 200)).save(blank, "JPEG")
    with running_app(
        tmp_path, default_pack_dir, decode_pixel_budget=1024, decode_budget_wait_s=0.0
    ) as client:

        def embed(data: bytes) -> int:
            files = [("image", ("p.jpg", data, "image/jpeg"))]
            return client.post("/v1/embed", files=files, headers=admin_headers()).status_code

        barrier = threading.Barrier(6)

        def racing() -> int:
            barrier.wait()
            return embed(photo)

        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda _: racing(), range(6)))
        assert set(statuses) == {200, 503}
        for route in ("/v1/detect", "/v1/embed", "/v1/identify"):  # no face: 200 or 422 inside the hold
            files = [("image", ("blank.jpg", blank.getvalue(), "image/jpeg"))]
            assert client.post(route, files=files, headers=admin_headers()).status_code in (200, 422)
        pair = [
            ("image_a", ("a.jpg", photo, "image/jpeg")),
            ("image_b", ("b.jpg", blank.getvalue(), "image/jpeg")),
        ]
        verify = client.post("/v1/verify", files=pair, headers=admin_headers())
        assert verify.status_code in (422, 503)  # b has no face; or a and b together exceed the budget
        assert [embed(photo) for _ in range(3)] == [200, 200, 200]  # nothing stayed reserved
