"""The default pack's int8 SFace: close to fp32 on real wild faces; its calibration chips and ranges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from export import sface
from export.calibration_faces import PORTRAITS, calibration_chips
from export.int8_static import rounded_ranges
from export.sface_int8 import nodes_to_quantize
from export.wheel_files import packaged_file
from service.evaluation.image_files import read_image
from service.evaluation.pairs import identity_folders
from service.packs.conventions import SFACE_112
from service.packs.loader import load_pack
from service.pipeline.face_pipeline import FacePipeline
from service.settings import FacePolicy, Settings

TEMPLATE = np.asarray(SFACE_112.template, dtype=np.float32)


def _embed(model: Path, chips: np.ndarray) -> np.ndarray:
    inputs = np.ascontiguousarray(chips.transpose(0, 3, 1, 2), dtype=np.float32)
    raw = sface.embed_raw(onnx.load(str(model)), inputs)
    return np.asarray(raw / np.linalg.norm(raw, axis=1, keepdims=True))


@pytest.fixture(scope="module")
def wild_chips(fp32_pack_dir: Path, shared_faces: Path) -> np.ndarray:
    """Chips of the first photo of 80 celeba_wild people (in-the-wild: pose, light, resolution)."""
    settings = Settings(models_dir=fp32_pack_dir.parent, pack=fp32_pack_dir.name, intra_op_threads=1)
    pipeline = FacePipeline.from_pack(load_pack(fp32_pack_dir), settings)
    chips = []
    people = identity_folders(shared_faces / "celeba_wild")
    for name in sorted(people)[:80]:
        face, _ = pipeline.analyze_chosen_sync(read_image(people[name][0]), FacePolicy.CENTRE)
        if face is not None:
            chips.append(face.chip)
    assert len(chips) >= 75
    return np.stack(chips)


def test_int8_embeddings_stay_close_to_fp32_on_wild_faces(
    wild_chips: np.ndarray, default_pack_dir: Path, fp32_pack_dir: Path
) -> None:
    int8 = _embed(load_pack(default_pack_dir).embedder_path, wild_chips)
    fp32 = _embed(load_pack(fp32_pack_dir).embedder_path, wild_chips)
    cosines = np.sum(int8 * fp32, axis=1)
    assert cosines.mean() > 0.993  # measured 0.996 on 327 celeba_wild chips
    assert cosines.min() > 0.97
    # What a threshold sees: every pair's score moves little against the default threshold (~0.38).
    pairs = np.triu_indices(len(wild_chips), k=1)
    moved = np.abs((int8 @ int8.T)[pairs] - (fp32 @ fp32.T)[pairs])
    assert moved.mean() < 0.01
    assert np.percentile(moved, 99) < 0.03


def test_default_pack_quantizes_the_same_width_pointwise_convolutions_and_fc(default_pack_dir: Path) -> None:
    graph = onnx.load(str(load_pack(default_pack_dir).embedder_path)).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    quantized = [
        node.name for node in graph.node if node.op_type in ("Conv", "Gemm") and node.input[1] in dequantized
    ]
    assert quantized == [*SAME_WIDTH_POINTWISE, "pre_fc1"]
    assert len([node for node in graph.node if node.op_type == "Conv"]) == 27  # the other 19 stay fp32


SAME_WIDTH_POINTWISE = [f"conv_{i}_conv2d" for i in (4, 6, 8, 9, 10, 11, 12, 14)]


def test_nodes_to_quantize_are_sfaces_same_width_pointwise_convolutions_and_fc(fp32_pack_dir: Path) -> None:
    model = onnx.load(str(load_pack(fp32_pack_dir).embedder_path))
    assert nodes_to_quantize(model) == [*SAME_WIDTH_POINTWISE, "pre_fc1"]


def test_ranges_are_widened_to_two_significant_digits_and_absorb_rounding_noise() -> None:
    measured = {
        "calibration_method": "CalibrationMethod.Percentile",
        "data": {
            "a": {"lowest": -3.410862922668457, "highest": {"data": 8.106459617614746, "CLS": "numpy.array"}},
            "b": {"lowest": 0.0, "highest": 0.0123456},
        },
    }
    ranges = rounded_ranges(measured)["data"]
    assert (ranges["a"]["lowest"], ranges["a"]["highest"]) == (-3.5, 8.2)
    assert (ranges["b"]["lowest"], ranges["b"]["highest"]) == (0.0, 0.013)
    # Another machine's floating point, a few ulps off, lands on the same ranges.
    nudged = {
        "calibration_method": measured["calibration_method"],
        "data": {"a": {"lowest": -3.410862922668457 * (1 + 1e-6), "highest": 8.106459617614746 * (1 - 1e-6)}},
    }
    assert rounded_ranges(nudged)["data"]["a"] == ranges["a"]


def test_calibration_chips_are_seeded_faces_of_the_two_portraits(fp32_pack_dir: Path, tmp_path: Path) -> None:
    first = calibration_chips(TEMPLATE, SFACE_112.input_size, tmp_path, count=16)
    again = calibration_chips(TEMPLATE, SFACE_112.input_size, tmp_path, count=16)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert {chip.shape for chip in first} == {(112, 112, 3)}
    assert len({chip.tobytes() for chip in first}) == 16  # every chip a fresh augmentation
    # They are faces, two people's: the portraits alternate, and each chip is nearer (fp32 SFace) to
    # the other chips of its own portrait than to the other person's.
    embeddings = _embed(load_pack(fp32_pack_dir).embedder_path, np.stack(first))
    person = np.arange(16) % 2
    scores = embeddings @ embeddings.T
    same = scores[(person[:, None] == person[None, :]) & ~np.eye(16, dtype=bool)]
    different = scores[person[:, None] != person[None, :]]
    assert same.mean() > 0.5 > different.mean()


def test_portraits_come_from_the_installed_wheels_by_their_bytes(tmp_path: Path) -> None:
    for portrait in PORTRAITS:
        data = packaged_file(portrait.file, tmp_path / "wheels")
        assert len(data) > 10_000
    assert not (tmp_path / "wheels").exists()  # nothing had to be downloaded: the installed files matched
