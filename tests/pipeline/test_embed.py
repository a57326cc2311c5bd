"""Embedder: preprocessing per manifest, batching, flip TTA, the one l2_normalize and the unit-norm check.

Most checks run a small linear ONNX model (its output is a known function of the input, so the
preprocessing can be checked exactly); the last ones run the real default pack on real faces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.packs.manifest import (
    ColorOrder,
    EmbedderSpec,
    PixelNormalization,
    Provenance,
    TemplateDerivation,
)
from service.pipeline.embed import (
    Embedder,
    EmbeddingOutputError,
    check_unit_rows,
    l2_normalize,
    preprocess_chips,
)
from service.pipeline.face_pipeline import (
    ACCELERATOR_BATCH_MAX_SIZE,
    CPU_BATCH_MAX_SIZE,
    resolved_batch_max_size,
)
from service.pipeline.runtime import OrtSession
from service.pipeline.session import InferenceSession

CHIP = 8  # chip width and height of the linear test model
DIM = 6
TEMPLATE = ((2.0, 3.0), (6.0, 3.0), (4.0, 4.5), (2.5, 6.0), (5.5, 6.0))


def _spec(color_order: ColorOrder = ColorOrder.RGB, *, flip: bool = False, dim: int = DIM) -> EmbedderSpec:
    return EmbedderSpec(
        file="linear.onnx",
        input_name="chips",
        output_name="embedding",
        input_size=(CHIP, CHIP),
        normalization=PixelNormalization(
            color_order=color_order, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0)
        ),
        template=TEMPLATE,
        template_derivation=TemplateDerivation(method="test"),
        embedding_size=dim,
        flip_augmentation=flip,
        provenance=Provenance(source="tests", license="none"),
    )


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((3 * CHIP * CHIP, DIM)).astype(np.float32)


def _scaled_linear_session(folder: Path, weights: np.ndarray, scale: float) -> InferenceSession:
    """embedding = (flatten(NCHW input) @ W) · scale: a real ONNX graph with a known answer."""
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["chips"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["linear"]),
            helper.make_node("Mul", ["linear", "scale"], ["embedding"]),
        ],
        "linear",
        [helper.make_tensor_value_info("chips", TensorProto.FLOAT, ["n", 3, CHIP, CHIP])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", DIM])],
        initializer=[
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(np.asarray(scale, dtype=np.float32), "scale"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = folder / "linear.onnx"
    onnx.save(model, path)
    return OrtSession(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))


@pytest.fixture(scope="module")
def linear_session(tmp_path_factory: pytest.TempPathFactory, weights: np.ndarray) -> InferenceSession:
    return _scaled_linear_session(tmp_path_factory.mktemp("linear"), weights, 1.0)


def _chips(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (CHIP, CHIP, 3), dtype=np.uint8) for _ in range(count)]


def _reference(
    chips: list[np.ndarray], weights: np.ndarray, color_order: ColorOrder, flip: bool
) -> np.ndarray:
    """What the embedder must compute, written out with nothing shared with the implementation."""
    out = []
    for chip in chips:
        pixels = chip.astype(np.float64)
        if color_order is ColorOrder.BGR:
            pixels = pixels[:, :, [2, 1, 0]]
        normalized = (pixels - [10.0, 20.0, 30.0]) / [2.0, 4.0, 8.0]
        vector = normalized.transpose(2, 0, 1).reshape(-1) @ weights
        if flip:
            vector = vector + normalized[:, ::-1].transpose(2, 0, 1).reshape(-1) @ weights
        out.append(vector / np.linalg.norm(vector))
    return np.asarray(out)


def test_l2_normalize_rows_vectors_and_zeros() -> None:
    rows = np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]], dtype=np.float64)
    normalized = l2_normalize(rows)
    assert normalized.dtype == np.float32
    np.testing.assert_allclose(normalized[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(normalized[1], [0.0, 0.0])
    assert np.all(np.isfinite(normalized))
    np.testing.assert_allclose(l2_normalize(np.array([0.0, 2.0], dtype=np.float32)), [0.0, 1.0])


def test_preprocess_layout_colour_order_and_normalization() -> None:
    chip = np.zeros((CHIP, CHIP, 3), dtype=np.uint8)
    chip[..., 0], chip[..., 1], chip[..., 2] = 50, 100, 150  # R, G, B
    chip[0, 1] = (0, 0, 0)  # a black pixel at row 0, column 1
    rgb = preprocess_chips([chip], _spec(ColorOrder.RGB))
    assert rgb.shape == (1, 3, CHIP, CHIP)
    assert rgb.dtype == np.float32
    assert rgb.flags.c_contiguous
    np.testing.assert_allclose(rgb[0, :, 2, 2], [(50 - 10) / 2, (100 - 20) / 4, (150 - 30) / 8])
    np.testing.assert_allclose(rgb[0, :, 0, 1], [-10 / 2, -20 / 4, -30 / 8])
    bgr = preprocess_chips([chip], _spec(ColorOrder.BGR))
    np.testing.assert_allclose(bgr[0, :, 2, 2], [(150 - 10) / 2, (100 - 20) / 4, (50 - 30) / 8])


def test_preprocess_rejects_chips_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="needs"):
        preprocess_chips([np.zeros((CHIP + 1, CHIP, 3), dtype=np.uint8)], _spec())
    with pytest.raises(ValueError, match="uint8"):
        preprocess_chips([np.zeros((CHIP, CHIP, 3), dtype=np.float32)], _spec())


@pytest.mark.parametrize("color_order", list(ColorOrder))
@pytest.mark.parametrize("flip", [False, True])
def test_embed_matches_the_reference_computation(
    linear_session: InferenceSession, weights: np.ndarray, color_order: ColorOrder, flip: bool
) -> None:
    chips = _chips(5)
    embedder = Embedder(linear_session, _spec(color_order, flip=flip))
    embeddings = embedder.embed(chips)
    assert embeddings.shape == (5, DIM)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, _reference(chips, weights, color_order, flip), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)


def test_flip_augmentation_is_mirror_invariant(linear_session: InferenceSession) -> None:
    chips = _chips(3, seed=1)
    embedder = Embedder(linear_session, _spec(flip=True))
    mirrored = [np.ascontiguousarray(chip[:, ::-1]) for chip in chips]
    np.testing.assert_allclose(embedder.embed(chips), embedder.embed(mirrored), atol=1e-5)


def test_batches_are_split_without_changing_results(linear_session: InferenceSession) -> None:
    chips = _chips(11, seed=2)
    whole = Embedder(linear_session, _spec(), max_batch=64).embed(chips)
    split = Embedder(linear_session, _spec(), max_batch=3).embed(chips)
    np.testing.assert_allclose(split, whole, atol=1e-6)
    assert Embedder(linear_session, _spec()).embed([]).shape == (0, DIM)


def test_manifest_and_model_disagreeing_on_size_is_an_error(linear_session: InferenceSession) -> None:
    with pytest.raises(RuntimeError, match="embedding_size"):
        Embedder(linear_session, _spec(dim=DIM + 1)).embed(_chips(1))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf / inf
@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_a_model_emitting_non_finite_values_is_a_clear_error(
    tmp_path: Path, weights: np.ndarray, scale: float
) -> None:
    embedder = Embedder(_scaled_linear_session(tmp_path, weights, scale), _spec())
    with pytest.raises(
        EmbeddingOutputError, match=r"'linear.onnx' produced 3 of 3 .* norm nan\); a nan norm"
    ):
        embedder.embed(_chips(3))


def test_a_model_emitting_zeros_is_refused(tmp_path: Path, weights: np.ndarray) -> None:
    # A zero vector has no direction: passing it on would break the unit norm everything after trusts.
    embedder = Embedder(_scaled_linear_session(tmp_path, weights, 0.0), _spec())
    with pytest.raises(EmbeddingOutputError, match=r"produced 2 of 2 .* norm 0\)"):
        embedder.embed(_chips(2))


def test_check_unit_rows_names_the_first_bad_row() -> None:
    rows = l2_normalize(np.array([[3.0, 4.0], [0.0, 1.0], [1.0, 1.0]]))
    assert check_unit_rows(rows, "m.onnx") is rows
    rows[2] = [0.5, 0.5]
    with pytest.raises(EmbeddingOutputError, match=r"1 of 3 embeddings .*\(row 2 has norm 0\.707107\)"):
        check_unit_rows(rows, "m.onnx")
    rows[1] = [0.0, 0.0]
    with pytest.raises(EmbeddingOutputError, match=r"2 of 3 embeddings .*\(row 1 has norm 0\)"):
        check_unit_rows(rows, "m.onnx")


# ---------------------------------------------------------------- the real default pack


def _load_johns(shared_faces: Path) -> dict[str, list[np.ndarray]]:
    johns = {}
    for person in sorted((shared_faces / "dlib_johns").iterdir()):
        if person.is_dir():
            johns[person.name] = [
                np.asarray(Image.open(p).convert("RGB")) for p in sorted(person.glob("*.jpg"))
            ]
    return johns


@pytest.fixture(scope="module")
def dlib_embedder(dlib_pack_dir: Path) -> Embedder:
    from service.packs.loader import load_pack
    from service.pipeline.runtime import RuntimeOptions, create_session
    from service.settings import ExecutionDevice

    pack = load_pack(dlib_pack_dir)
    session = create_session(
        pack.embedder_path, RuntimeOptions(device=ExecutionDevice.CPU, intra_op_threads=2)
    )
    return Embedder(session, pack.manifest.embedder)


def test_dlib_pack_separates_real_identities(dlib_embedder: Embedder, shared_faces: Path) -> None:
    # dlib_johns images are 150×150 chips in dlib's geometry: the dlib pack's own chip convention.
    johns = _load_johns(shared_faces)
    names = list(johns)
    chips = [chip for name in names for chip in johns[name][:4]]
    labels = np.repeat(np.arange(len(names)), 4)
    embeddings = dlib_embedder.embed(chips)
    assert embeddings.shape == (len(chips), dlib_embedder.embedding_size)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(chips), dtype=bool)
    genuine, impostor = similarity[same & off_diagonal], similarity[~same]
    # Every genuine pair scores above every impostor pair on these five people.
    assert genuine.min() > impostor.max(), (genuine.min(), impostor.max())


@pytest.mark.parametrize(
    ("configured", "providers", "expected"),
    [
        (0, ["CPUExecutionProvider"], CPU_BATCH_MAX_SIZE),
        (0, ["CUDAExecutionProvider", "CPUExecutionProvider"], ACCELERATOR_BATCH_MAX_SIZE),
        (0, ["TensorrtExecutionProvider", "CUDAExecutionProvider"], ACCELERATOR_BATCH_MAX_SIZE),
        (7, ["CPUExecutionProvider"], 7),
        (7, ["CUDAExecutionProvider"], 7),
    ],
)
def test_batch_cap_follows_the_setting_or_the_device(
    configured: int, providers: list[str], expected: int
) -> None:
    assert resolved_batch_max_size(configured, providers) == expected


def test_the_default_pipeline_on_cpu_embeds_in_small_batches_with_the_same_results(
    default_pack_dir: Path, shared_faces: Path
) -> None:
    from service.evaluation.image_files import read_image
    from service.packs.loader import load_pack
    from service.pipeline.face_pipeline import FacePipeline
    from service.settings import Settings

    pack = load_pack(default_pack_dir)
    small = FacePipeline.from_pack(pack, Settings(device="cpu"))
    large = FacePipeline.from_pack(pack, Settings(device="cpu", batch_max_size=32))
    assert small.embed_batch_max_size == CPU_BATCH_MAX_SIZE
    assert large.embed_batch_max_size == 32
    photos = sorted((shared_faces / "dlib_johns").rglob("*.jpg"))[:12]
    chips = [small.align(image, small.detect(image)[0]) for image in map(read_image, photos)]
    np.testing.assert_allclose(small.embed_chips_sync(chips), large.embed_chips_sync(chips), atol=1e-5)
