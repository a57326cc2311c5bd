"""insightface packs: manifests from the known file tables, written by the loader on first use.

The real packs are not redistributable and not reachable offline, so the tests build tiny randomly
initialised ONNX models with the same signatures: det_10g.onnx (input "input.1" [1,3,?,?], nine
outputs: scores, boxes, keypoints for strides 8/16/32) and w600k_r50.onnx (input "input.1"
[N,3,112,112], output [N,512]).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.packs.conventions import ARCFACE_TEMPLATE_112
from service.packs.files import PackError, sha256_file
from service.packs.insightface import (
    INSIGHTFACE_PACKS,
    match_insightface_layout,
    write_insightface_manifest,
)
from service.packs.loader import load_pack, resolve_pack_dir
from service.packs.manifest import MANIFEST_FILE, ColorOrder, ScrfdDecoder

STRIDES = (8, 16, 32)
# det_10g.onnx's output names, in its order: scores x3, boxes x3, keypoints x3.
DET_OUTPUTS = ("448", "471", "494", "451", "474", "497", "454", "477", "500")
EMB_OUTPUT = "683"


def _weights(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def scrfd_like_model(path: Path, seed: int) -> None:
    """Per stride: average-pool by the stride, 1×1 convs to 2 anchors × (1 score, 4 box, 10 kps)."""
    rng = np.random.default_rng(seed)
    roles = {"score": 0, "bbox": 3, "kps": 6}  # offset of each role in the output list
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    outputs: dict[int, tuple[str, int]] = {}
    for index, stride in enumerate(STRIDES):
        pooled = f"pool{stride}"
        pool = helper.make_node(
            "AveragePool", ["input.1"], [pooled], kernel_shape=[stride] * 2, strides=[stride] * 2
        )
        nodes.append(pool)
        for kind, channels in (("score", 1), ("bbox", 4), ("kps", 10)):
            position = index + roles[kind]
            out_name = DET_OUTPUTS[position]
            weight = f"w_{kind}{stride}"
            inits.append(_weights(rng, weight, (2 * channels, 3, 1, 1)))
            inits.append(
                numpy_helper.from_array(np.array([-1, channels], dtype=np.int64), f"shape_{kind}{stride}")
            )
            conv, moved = f"conv_{kind}{stride}", f"nhwc_{kind}{stride}"
            nodes.append(helper.make_node("Conv", [pooled, weight], [conv]))
            nodes.append(helper.make_node("Transpose", [conv], [moved], perm=[0, 2, 3, 1]))
            if kind == "score":
                flat = f"flat_{kind}{stride}"
                nodes.append(helper.make_node("Reshape", [moved, f"shape_{kind}{stride}"], [flat]))
                nodes.append(helper.make_node("Sigmoid", [flat], [out_name]))
            else:
                nodes.append(helper.make_node("Reshape", [moved, f"shape_{kind}{stride}"], [out_name]))
            outputs[position] = (out_name, channels)
    graph = helper.make_graph(
        nodes,
        "scrfd_like",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        [
            helper.make_tensor_value_info(*outputs[i][:1], TensorProto.FLOAT, ["n", outputs[i][1]])
            for i in sorted(outputs)
        ],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def arcface_like_model(path: Path, seed: int, *, size: int = 512) -> None:
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("GlobalAveragePool", ["input.1"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w"], [EMB_OUTPUT], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "arcface_like",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info(EMB_OUTPUT, TensorProto.FLOAT, ["None", size])],
        [_weights(rng, "fc_w", (size, 3))],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """buffalo_l/ and antelopev2/ (nested as the antelopev2 zip unpacks) with the packs' file names."""
    for seed, layout in enumerate(INSIGHTFACE_PACKS.values()):
        folder = tmp_path / layout.name
        if layout.name == "antelopev2":
            folder = folder / layout.name
        folder.mkdir(parents=True)
        scrfd_like_model(folder / layout.detector_file, seed)
        arcface_like_model(folder / layout.embedder_file, seed)
        (folder / "genderage.onnx").write_bytes(b"ignored by the file table")
    return tmp_path


def test_loader_writes_buffalo_l_manifest_with_insightface_conventions(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pack_dir = resolve_pack_dir(models_dir, "buffalo_l")
    with caplog.at_level(logging.INFO, logger="service.packs.loader"):
        pack = load_pack(pack_dir)
    assert "insightface pack 'buffalo_l'" in caplog.text
    assert (pack_dir / MANIFEST_FILE).is_file()

    manifest = pack.manifest
    assert manifest.files == {
        "det_10g.onnx": sha256_file(pack_dir / "det_10g.onnx"),
        "w600k_r50.onnx": sha256_file(pack_dir / "w600k_r50.onnx"),
    }
    assert manifest.id == f"insightface-buffalo_l-{manifest.files['w600k_r50.onnx'][:8]}"

    embedder = manifest.embedder
    assert (embedder.file, embedder.input_name, embedder.output_name) == (
        "w600k_r50.onnx",
        "input.1",
        EMB_OUTPUT,
    )
    assert embedder.input_size == (112, 112)
    assert embedder.embedding_size == 512
    assert embedder.template == ARCFACE_TEMPLATE_112
    assert embedder.normalization.color_order is ColorOrder.RGB
    assert embedder.normalization.mean == (127.5, 127.5, 127.5)
    assert embedder.normalization.std == (127.5, 127.5, 127.5)
    assert "non-commercial" in embedder.provenance.license

    detector = manifest.detector
    assert isinstance(detector.decoder, ScrfdDecoder)
    assert detector.decoder.strides == STRIDES
    assert detector.decoder.anchors_per_location == 2
    # Roles by model order: (scores, boxes, keypoints) for stride 8, then 16, then 32.
    assert detector.decoder.outputs == (("448", "451", "454"), ("471", "474", "477"), ("494", "497", "500"))
    assert detector.input_name == "input.1"
    assert detector.fixed_input_size == (640, 640)
    assert detector.normalization.std == (128.0, 128.0, 128.0)
    assert detector.normalization.color_order is ColorOrder.RGB
    assert manifest.calibration.operating_points["default"].source


def test_manifest_is_written_once_and_then_read(models_dir: Path) -> None:
    pack_dir = models_dir / "buffalo_l"
    first = load_pack(pack_dir)
    written = (pack_dir / MANIFEST_FILE).stat().st_mtime_ns
    second = load_pack(pack_dir)
    assert (pack_dir / MANIFEST_FILE).stat().st_mtime_ns == written
    assert second.manifest == first.manifest


def test_antelopev2_nested_layout(models_dir: Path) -> None:
    pack = load_pack(models_dir / "antelopev2")
    assert pack.manifest.detector.file == "antelopev2/scrfd_10g_bnkps.onnx"
    assert pack.manifest.embedder.file == "antelopev2/glintr100.onnx"
    assert pack.manifest.id.startswith("insightface-antelopev2-")
    assert "Glint360K" in pack.manifest.description


def test_sessions_run_on_the_declared_names(models_dir: Path) -> None:
    pack = load_pack(models_dir / "buffalo_l")
    manifest = pack.manifest
    det = ort.InferenceSession(str(pack.detector_path), providers=["CPUExecutionProvider"])
    width, height = manifest.detector.fixed_input_size or (0, 0)
    image = np.zeros((1, 3, height, width), dtype=np.float32)
    assert isinstance(manifest.detector.decoder, ScrfdDecoder)
    for stride, names in zip(STRIDES, manifest.detector.decoder.outputs, strict=True):
        scores, boxes, kps = det.run(list(names), {manifest.detector.input_name: image})
        cells = 2 * (width // stride) * (height // stride)
        assert scores.shape == (cells, 1)
        assert boxes.shape == (cells, 4)
        assert kps.shape == (cells, 10)

    emb = ort.InferenceSession(str(pack.embedder_path), providers=["CPUExecutionProvider"])
    chips = np.random.default_rng(0).standard_normal((3, 3, 112, 112)).astype(np.float32)
    (out,) = emb.run([manifest.embedder.output_name], {manifest.embedder.input_name: chips})
    assert out.shape == (3, manifest.embedder.embedding_size)


def test_written_manifest_verifies_sha256(models_dir: Path) -> None:
    pack_dir = models_dir / "buffalo_l"
    write_insightface_manifest(pack_dir)
    with (pack_dir / "w600k_r50.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(PackError, match=r"sha256 mismatch for 'w600k_r50\.onnx'"):
        load_pack(pack_dir)


def test_unknown_folder_is_not_guessed(models_dir: Path) -> None:
    other = models_dir / "mystery"
    other.mkdir()
    shutil.copy(models_dir / "buffalo_l" / "w600k_r50.onnx", other / "model.onnx")
    assert match_insightface_layout(other) is None
    with pytest.raises(PackError, match="match no known insightface pack"):
        load_pack(other)
    with pytest.raises(PackError, match="known layouts: buffalo_l"):
        write_insightface_manifest(other)


def test_detector_with_wrong_output_count_is_refused(models_dir: Path) -> None:
    pack_dir = models_dir / "buffalo_l"
    arcface_like_model(pack_dir / "det_10g.onnx", seed=7)  # one output instead of nine
    with pytest.raises(PackError, match="expected 9 outputs"):
        load_pack(pack_dir)
    assert not (pack_dir / MANIFEST_FILE).exists()


def test_unwritable_folder_uses_manifest_from_memory(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A read-only volume (chmod cannot simulate it for root): writing the manifest fails with EROFS.
    def read_only(pack_dir: Path, manifest: object) -> Path:
        raise OSError(30, "Read-only file system", str(pack_dir / MANIFEST_FILE))

    monkeypatch.setattr("service.packs.loader.write_manifest", read_only)
    pack_dir = models_dir / "buffalo_l"
    with caplog.at_level(logging.WARNING, logger="service.packs.loader"):
        pack = load_pack(pack_dir)
    assert "using it from memory" in caplog.text
    assert not (pack_dir / MANIFEST_FILE).exists()
    assert pack.manifest.embedder.file == "w600k_r50.onnx"
