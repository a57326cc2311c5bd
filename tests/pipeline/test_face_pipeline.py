"""FacePipeline on the real default pack and real photos."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import insightface
import numpy as np
import pytest
from PIL import Image

from service.packs.loader import load_pack
from service.pipeline.face_pipeline import FacePipeline
from service.settings import Settings

T1 = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def batch_sizes() -> list[int]:
    return []


@pytest.fixture(scope="module")
def pipeline(default_pack_dir: Path, batch_sizes: list[int]) -> FacePipeline:
    settings = Settings(device="cpu", intra_op_threads=2, batch_max_wait_ms=20.0)
    return FacePipeline.from_pack(load_pack(default_pack_dir), settings, on_batch=batch_sizes.append)


@pytest.fixture(scope="module")
def johns(shared_faces: Path) -> dict[str, list[np.ndarray]]:
    people = sorted(p for p in (shared_faces / "dlib_johns").iterdir() if p.is_dir())
    return {person.name: [_rgb(p) for p in sorted(person.glob("*.jpg"))[:3]] for person in people}


def test_reports_pack_and_providers(pipeline: FacePipeline, default_pack_dir: Path) -> None:
    manifest = load_pack(default_pack_dir, verify=False).manifest
    assert pipeline.pack_id == manifest.id
    assert pipeline.embedding_size == manifest.embedder.embedding_size
    assert pipeline.chip_size == manifest.embedder.input_size
    assert pipeline.providers == {"detector": ["CPUExecutionProvider"], "embedder": ["CPUExecutionProvider"]}


def test_t1_has_six_faces_embedded(pipeline: FacePipeline) -> None:
    faces = pipeline.analyze_sync(_rgb(T1))
    assert len(faces) == 6
    areas = [f.face.area for f in faces]
    assert areas == sorted(areas, reverse=True)  # largest first
    width, height = pipeline.chip_size
    for face in faces:
        assert face.chip.shape == (height, width, 3)
        assert face.chip.dtype == np.uint8
        assert face.embedding.shape == (pipeline.embedding_size,)
        assert face.embedding.dtype == np.float32
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
        assert face.quality.det_score == face.face.score
        assert face.quality.sharpness > 0
    # Six different people, six different chips: no two embeddings (near-)identical.
    embeddings = np.stack([f.embedding for f in faces])
    similarity = embeddings @ embeddings.T
    assert similarity[~np.eye(6, dtype=bool)].max() < 0.99
    top_two = pipeline.analyze_sync(_rgb(T1), max_faces=2)
    np.testing.assert_allclose(np.stack([f.embedding for f in top_two]), embeddings[:2], atol=1e-6)


def test_same_person_is_closer_than_different_people(
    pipeline: FacePipeline, johns: dict[str, list[np.ndarray]]
) -> None:
    embedded = {
        name: [pipeline.analyze_sync(image)[0].embedding for image in images]
        for name, images in johns.items()
    }
    for name, (first, second, _) in embedded.items():
        same = float(first @ second)
        others = [float(first @ e[0]) for other, e in embedded.items() if other != name]
        assert same > max(others), (name, same, max(others))


def test_async_path_matches_sync_and_coalesces(
    pipeline: FacePipeline, johns: dict[str, list[np.ndarray]], batch_sizes: list[int]
) -> None:
    images = [image for images in johns.values() for image in images[:2]] + [_rgb(T1)]

    async def serve() -> list[list[np.ndarray]]:
        async with pipeline:
            results = await asyncio.gather(*(pipeline.analyze(image) for image in images))
        return [[face.embedding for face in faces] for faces in results]

    batch_sizes.clear()
    concurrent = asyncio.run(serve())
    for image, embeddings in zip(images, concurrent, strict=True):
        expected = [face.embedding for face in pipeline.analyze_sync(image)]
        np.testing.assert_allclose(np.stack(embeddings), np.stack(expected), atol=1e-5)
    assert sum(batch_sizes) == sum(len(e) for e in concurrent)
    assert len(batch_sizes) < len(images)  # requests shared embedding runs


def test_embed_chips_async_and_sync_agree(pipeline: FacePipeline, johns: dict[str, list[np.ndarray]]) -> None:
    # Real faces resized to the pack's chip size: the point is that both paths give the same numbers.
    chips = [np.ascontiguousarray(cv2.resize(images[0], pipeline.chip_size)) for images in johns.values()]

    async def embed() -> np.ndarray:
        async with pipeline:
            return await pipeline.embed_chips(chips)

    np.testing.assert_allclose(asyncio.run(embed()), pipeline.embed_chips_sync(chips), atol=1e-6)


def test_storage_crop_realigns_to_the_same_chip(pipeline: FacePipeline) -> None:
    from service.pipeline.align import align_to_template

    image = _rgb(T1)
    face = pipeline.detect(image)[0]
    crop, landmarks = pipeline.storage_crop(image, face)
    width, height = pipeline.chip_size
    assert crop.shape[0] > height
    assert crop.shape[1] > width
    realigned = align_to_template(crop, landmarks, pipeline.template, pipeline.chip_size)
    direct = pipeline.align(image, face)
    assert np.abs(realigned.astype(int) - direct.astype(int)).mean() < 3.0
    embeddings = pipeline.embed_chips_sync([realigned, direct])
    assert float(embeddings[0] @ embeddings[1]) > 0.99


def test_no_face_gives_no_result(pipeline: FacePipeline) -> None:
    blank = np.full((200, 300, 3), 128, dtype=np.uint8)
    assert pipeline.detect(blank) == []
    assert pipeline.analyze_sync(blank) == []
