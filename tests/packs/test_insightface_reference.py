"""insightface packs through our pipeline give what insightface's own classes give, on a real photo.

The real weights are not reachable offline, so both sides run the same tiny randomly initialised ONNX
models with the real signatures (det_10g.onnx / scrfd_10g_bnkps.onnx, w600k_r50.onnx / glintr100.onnx).
Random models are enough here: parity of preprocessing (letterbox, colour order, mean/std), SCRFD
decoding, NMS, alignment and embedding does not depend on what the weights learned, and a random model
is sensitive to every one of those conventions (the negative controls below show it).

Reference side: ``insightface.model_zoo.scrfd.SCRFD``, ``insightface.utils.face_align.norm_crop`` and
``insightface.model_zoo.arcface_onnx.ArcFaceONNX``, fed BGR images as insightface expects. Our side:
``load_pack`` on a folder laid out like the real pack (manifest written from the file table),
``build_detector``, ``align_to_template`` and ``Embedder``, fed RGB images as the service does.

Two differences are by design and are pinned down exactly rather than hidden:
- NMS: insightface's ``SCRFD.nms`` measures boxes with the legacy "+1 pixel" convention; ours uses
  continuous IoU. Feeding insightface's own ``nms`` boxes with x2, y2 reduced by one cancels its +1
  exactly, and then the kept sets must be identical.
- Shrinking: our letterbox shrinks with ``cv2.INTER_AREA`` (no aliasing of small faces), insightface
  with ``cv2.INTER_LINEAR``. For a photo larger than 640 px insightface is given the photo shrunk
  with INTER_AREA, and its coordinates are mapped back by the same exact factor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD
from insightface.utils.face_align import estimate_norm, norm_crop
from onnx import TensorProto, helper, numpy_helper

from export.chip_template import default_retinaface_detector
from service.packs.conventions import ARCFACE_TEMPLATE_112
from service.packs.insightface import INSIGHTFACE_PACKS
from service.packs.loader import LoadedPack, load_pack, resolve_pack_dir
from service.pipeline.align import align_to_template, estimate_similarity
from service.pipeline.decode import decode_image
from service.pipeline.detect import DetectionOptions, FaceDetector
from service.pipeline.detectors import build_detector
from service.pipeline.embed import Embedder, l2_normalize
from service.pipeline.runtime import RuntimeOptions, create_session
from service.pipeline.types import DetectedFace, ImageArray
from service.settings import ExecutionDevice
from tests.packs.test_insightface_packs import DET_OUTPUTS, EMB_OUTPUT

# insightface 2.1's face_align still calls SimilarityTransform.estimate, deprecated in scikit-image 0.26.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

STRIDES = (8, 16, 32)
ANCHORS = 2
DET_SIZE = 640  # insightface's det_size for these packs, and our manifest's fixed input size
SCORE_THRESHOLD = 0.5  # insightface's det_thresh
NMS_THRESHOLD = 0.4  # insightface's nms_thresh
NO_NMS = 1.0  # an IoU threshold nothing exceeds: every candidate above the score threshold survives
PRE_NMS_TOP_K = 5000  # our detector keeps at most this many candidates before NMS
# Output names of the batched variant (scrfd_10g_bnkps.onnx has [1, N, C] outputs).
BATCHED_DET_OUTPUTS = tuple(f"{role}_{stride}" for role in ("score", "bbox", "kps") for stride in STRIDES)
SCORE_GAIN, SCORE_BIAS = 12.0, -4.0  # edge response → logit of the reference detector's scores
CPU_ONE_THREAD = RuntimeOptions(device=ExecutionDevice.CPU, intra_op_threads=1)


# --------------------------------------------------------------------------- tiny models


def scrfd_reference_model(path: Path, *, output_names: tuple[str, ...], batched: bool, seed: int) -> None:
    """An SCRFD-signature model with image-dependent, well-formed outputs.

    Input "input.1" [1, 3, ?, ?]; nine outputs in insightface's order (scores ×3 strides, boxes ×3,
    keypoints ×3), each [N, C] or, ``batched``, [1, N, C], N = 2 anchors per location, row-major.
    Per stride the input is average-pooled by the stride, then:
    - scores: sigmoid of a zero-sum 3×3 convolution (an edge detector) minus 4, so a few percent of
      anchors, on textured parts of the photo, pass 0.5 and their scores are all distinct;
    - box distances: softplus + 1 strides, positive as a trained SCRFD's are (boxes of 8–200 px that
      overlap, so NMS has work to do);
    - keypoint offsets: a 1×1 convolution, any sign.
    """
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = [numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")]
    outputs: dict[int, onnx.ValueInfoProto] = {}
    for stride_index, stride in enumerate(STRIDES):
        pooled = f"pool{stride}"
        nodes.append(
            helper.make_node(
                "AveragePool", ["input.1"], [pooled], kernel_shape=[stride] * 2, strides=[stride] * 2
            )
        )
        for role_index, (role, channels) in enumerate((("score", 1), ("bbox", 4), ("kps", 10))):
            name = f"{role}{stride}"
            if role == "score":
                weight = rng.standard_normal((ANCHORS * channels, 3, 3, 3))
                weight -= weight.mean(axis=(2, 3), keepdims=True)  # flat regions score 0
                # Unit-norm kernels: the share of anchors that pass does not depend on the seed.
                weight *= (
                    SCORE_GAIN / np.linalg.norm(weight.reshape(len(weight), -1), axis=1)[:, None, None, None]
                )
                bias, pads = np.full(ANCHORS * channels, SCORE_BIAS), [1, 1, 1, 1]
            else:
                weight = rng.standard_normal((ANCHORS * channels, 3, 1, 1))
                bias, pads = np.zeros(ANCHORS * channels), [0, 0, 0, 0]
            inits += [
                numpy_helper.from_array(weight.astype(np.float32), f"{name}_w"),
                numpy_helper.from_array(bias.astype(np.float32), f"{name}_b"),
                numpy_helper.from_array(np.array([-1, channels], dtype=np.int64), f"{name}_shape"),
            ]
            nodes += [
                helper.make_node("Conv", [pooled, f"{name}_w", f"{name}_b"], [f"{name}_conv"], pads=pads),
                helper.make_node("Transpose", [f"{name}_conv"], [f"{name}_nhwc"], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [f"{name}_nhwc", f"{name}_shape"], [f"{name}_rows"]),
            ]
            last = f"{name}_rows"
            if role == "score":
                nodes.append(helper.make_node("Sigmoid", [last], [f"{name}_act"]))
                last = f"{name}_act"
            elif role == "bbox":
                nodes.append(helper.make_node("Softplus", [last], [f"{name}_soft"]))
                nodes.append(helper.make_node("Add", [f"{name}_soft", "one"], [f"{name}_act"]))
                last = f"{name}_act"
            position = 3 * role_index + stride_index
            out_name = output_names[position]
            if batched:
                inits.append(numpy_helper.from_array(np.array([0], dtype=np.int64), f"{name}_axis"))
                nodes.append(helper.make_node("Unsqueeze", [last, f"{name}_axis"], [out_name]))
                shape: list[int | str] = [1, "n", channels]
            else:
                nodes.append(helper.make_node("Identity", [last], [out_name]))
                shape = ["n", channels]
            outputs[position] = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, shape)
    graph = helper.make_graph(
        nodes,
        "scrfd_reference",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        [outputs[i] for i in sorted(outputs)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def arcface_reference_model(path: Path, *, seed: int, size: int = 512) -> None:
    """An ArcFace-signature model ("input.1" [N, 3, 112, 112] -> [N, size]) sensitive to layout.

    A 16×16/16 convolution with bias, ReLU and a dense layer: the output depends on where each pixel
    is, on its channel and, through the ReLU, on the pixels' offset and scale, so a wrong colour
    order, mean, std or mirroring changes the embedding's direction. Nodes get neutral names:
    ArcFaceONNX reads leading "Sub"/"Mul" nodes as in-graph normalization.
    """
    rng = np.random.default_rng(seed)
    cells = 112 // 16
    inits = [
        numpy_helper.from_array((rng.standard_normal((16, 3, 16, 16)) * 0.05).astype(np.float32), "conv_w"),
        numpy_helper.from_array((rng.standard_normal(16) * 0.2).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.standard_normal((size, 16 * cells * cells)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(size).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input.1", "conv_w", "conv_b"], ["conv"], strides=[16, 16], name="conv0"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu0"),
        helper.make_node("Flatten", ["relu"], ["flat"], name="flatten0"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], [EMB_OUTPUT], transB=1, name="fc0"),
    ]
    graph = helper.make_graph(
        nodes,
        "arcface_reference",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info(EMB_OUTPUT, TensorProto.FLOAT, ["None", size])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def packs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedPack]:
    """buffalo_l (outputs [N, C]) and antelopev2 (outputs [1, N, C], nested as its zip unpacks)."""
    models_dir = tmp_path_factory.mktemp("models")
    batched = {"buffalo_l": False, "antelopev2": True}
    loaded = {}
    for seed, layout in enumerate(INSIGHTFACE_PACKS.values()):
        folder = models_dir / layout.name / (layout.name if layout.name == "antelopev2" else "")
        folder.mkdir(parents=True)
        names = BATCHED_DET_OUTPUTS if batched[layout.name] else DET_OUTPUTS
        scrfd_reference_model(
            folder / layout.detector_file, output_names=names, batched=batched[layout.name], seed=seed
        )
        arcface_reference_model(folder / layout.embedder_file, seed=seed)
        loaded[layout.name] = load_pack(resolve_pack_dir(models_dir, layout.name))  # writes the manifest
    return loaded


@pytest.fixture(scope="module")
def photo() -> ImageArray:
    """insightface's t1.jpg (1280×886, six faces) as RGB, decoded by the service's decoder."""
    data = (resources.files("insightface") / "data" / "images" / "t1.jpg").read_bytes()
    return decode_image(data, max_bytes=1 << 26, max_pixels=1 << 26)


@pytest.fixture(scope="module")
def photo_faces(photo: ImageArray) -> list[DetectedFace]:
    """Real landmarks: the default pack's RetinaFace (real weights) on the photo."""
    faces = default_retinaface_detector().detect(photo)
    assert len(faces) == 6
    return faces


def bgr(image: np.ndarray) -> ImageArray:
    """RGB → BGR (or back): a contiguous copy with the channels reversed."""
    return np.ascontiguousarray(image[..., ::-1], dtype=np.uint8)


def one_thread_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class View:
    """A real photo as fed to both detectors, and how insightface's copy relates to ours."""

    ours: ImageArray  # RGB, given to our detector
    theirs: ImageArray  # BGR, given to insightface
    scale: float  # insightface's coordinates / ours


def at_input_size(photo: ImageArray) -> View:
    """The photo shrunk to 640×443 beforehand: both letterboxes are the identity."""
    at_size = np.asarray(cv2.resize(photo, (640, 443), interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return View(at_size, bgr(at_size), 1.0)


def enlarged(photo: ImageArray) -> View:
    """A 320×240 region: both letterboxes enlarge it 2× with bilinear interpolation."""
    region = np.ascontiguousarray(photo[100:340, 300:620])
    return View(region, bgr(region), 1.0)


def shrunk(photo: ImageArray) -> View:
    """A 1000×400 region that our letterbox shrinks by 0.64 with INTER_AREA (module docstring)."""
    region = np.ascontiguousarray(photo[300:700, 0:1000])
    shrunk_region = cv2.resize(region, (640, 256), interpolation=cv2.INTER_AREA)
    return View(region, bgr(shrunk_region), 0.64)


VIEWS: dict[str, Callable[[ImageArray], View]] = {
    "at_input_size": at_input_size,
    "enlarged": enlarged,
    "shrunk": shrunk,
}


def letterbox_sizes_agree(width: int, height: int) -> bool:
    """Whether insightface's truncating resize and our rounding one give the same picture size."""
    scale = min(DET_SIZE / width, DET_SIZE / height)
    ours = (round(width * scale), round(height * scale))
    ratio = height / width
    theirs = (DET_SIZE, int(DET_SIZE * ratio)) if ratio <= 1.0 else (int(DET_SIZE / ratio), DET_SIZE)
    return ours == theirs


def our_detector(pack: LoadedPack, nms_threshold: float) -> FaceDetector:
    options = DetectionOptions(
        input_size=DET_SIZE,
        score_threshold=SCORE_THRESHOLD,
        nms_threshold=nms_threshold,
        max_faces=PRE_NMS_TOP_K,  # insightface's detect keeps every face (max_num=0)
        min_face_size=0,  # insightface has no size filter
    )
    return build_detector(pack.manifest.detector, create_session(pack.detector_path, CPU_ONE_THREAD), options)


def insightface_detector(pack: LoadedPack, nms_threshold: float) -> SCRFD:
    detector = SCRFD(model_file=str(pack.detector_path), session=one_thread_session(pack.detector_path))
    detector.prepare(
        -1, input_size=(DET_SIZE, DET_SIZE), det_thresh=SCORE_THRESHOLD, nms_thresh=nms_threshold
    )
    return detector


def rows_from_faces(faces: list[DetectedFace]) -> np.ndarray:
    """(N, 15): box, score, ten keypoint coordinates, in a canonical order (score, then position)."""
    rows = np.array([[*face.box, face.score, *face.landmarks.ravel()] for face in faces], dtype=np.float64)
    return canonical(rows.reshape(-1, 15))


def rows_from_insightface(det: np.ndarray, kpss: np.ndarray, scale: float) -> np.ndarray:
    rows = np.hstack([det[:, :4] / scale, det[:, 4:5], kpss.reshape(-1, 10) / scale]).astype(np.float64)
    return canonical(rows)


def canonical(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort((rows[:, 1], rows[:, 0], -rows[:, 4]))]


def assert_same_detections(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours[:, 4], theirs[:, 4], atol=1e-6)  # scores
    np.testing.assert_allclose(ours[:, :4], theirs[:, :4], atol=1e-3)  # boxes, pixels
    np.testing.assert_allclose(ours[:, 5:], theirs[:, 5:], atol=1e-3)  # keypoints, pixels


@pytest.mark.parametrize("view_name", sorted(VIEWS))
@pytest.mark.parametrize("pack_name", ["buffalo_l", "antelopev2"])
def test_scrfd_detections_match_insightface(
    packs: dict[str, LoadedPack], photo: ImageArray, pack_name: str, view_name: str
) -> None:
    pack = packs[pack_name]
    view = VIEWS[view_name](photo)
    height, width = view.ours.shape[:2]
    assert letterbox_sizes_agree(width, height)

    # Decoding: every candidate above the threshold, NMS off on both sides.
    det, kpss = insightface_detector(pack, NO_NMS).detect(view.theirs)
    candidates = rows_from_insightface(det, kpss, view.scale)
    assert 50 < len(candidates) < PRE_NMS_TOP_K  # a real workload, within our pre-NMS cap
    assert_same_detections(rows_from_faces(our_detector(pack, NO_NMS).detect(view.ours)), candidates)

    # NMS: insightface's own nms on those candidates, its "+1" cancelled, keeps what ours keeps.
    reference = insightface_detector(pack, NMS_THRESHOLD)
    without_plus_one = det.copy()
    without_plus_one[:, 2:4] -= 1.0
    keep = reference.nms(without_plus_one)
    expected = rows_from_insightface(det[keep], kpss[keep], view.scale)
    kept = rows_from_faces(our_detector(pack, NMS_THRESHOLD).detect(view.ours))
    assert len(kept) < 0.8 * len(candidates)  # NMS did suppress overlapping boxes
    assert_same_detections(kept, expected)


def matched_fraction(ours: np.ndarray, theirs: np.ndarray) -> float:
    """The share of our detections that ``theirs`` has too (same score and box, the tolerances above)."""
    if len(ours) == 0:
        return 1.0 if len(theirs) == 0 else 0.0
    found = [
        bool(
            np.any(
                (np.abs(theirs[:, 4] - row[4]) <= 1e-6)
                & np.all(np.abs(theirs[:, :4] - row[:4]) <= 1e-3, axis=1)
            )
        )
        for row in ours
    ]
    return float(np.mean(found))


@pytest.mark.parametrize("view_name", sorted(VIEWS))
@pytest.mark.parametrize("pack_name", ["buffalo_l", "antelopev2"])
def test_a_colour_swap_would_be_caught(
    packs: dict[str, LoadedPack], photo: ImageArray, pack_name: str, view_name: str
) -> None:
    """Negative control: insightface fed RGB instead of BGR decodes different candidates.

    Strict: the positive test's own comparison must reject them, and fewer than one of our
    candidates in four survives the swap unchanged, on every view of both packs.
    """
    pack = packs[pack_name]
    view = VIEWS[view_name](photo)
    det, kpss = insightface_detector(pack, NO_NMS).detect(np.ascontiguousarray(view.theirs[..., ::-1]))
    swapped = rows_from_insightface(det, kpss, view.scale)
    ours = rows_from_faces(our_detector(pack, NO_NMS).detect(view.ours))
    assert len(ours) > 50  # a real workload, as in the positive test
    with pytest.raises(AssertionError):
        assert_same_detections(ours, swapped)
    # Measured 6–17 % of candidates unchanged (grey and padded areas, where channel order does not
    # matter); deterministic (fixed seeds, one photo), so the bar leaves margin without flakiness.
    assert matched_fraction(ours, swapped) < 0.25
    # The measure itself finds a match when there is one: the unswapped reference matches in full.
    det, kpss = insightface_detector(pack, NO_NMS).detect(view.theirs)
    assert matched_fraction(ours, rows_from_insightface(det, kpss, view.scale)) == 1.0


# --------------------------------------------------------------------------- alignment


def test_alignment_matches_norm_crop(photo: ImageArray, photo_faces: list[DetectedFace]) -> None:
    template = np.asarray(ARCFACE_TEMPLATE_112, dtype=np.float32)
    for face in photo_faces:
        np.testing.assert_allclose(
            estimate_similarity(face.landmarks, template),
            estimate_norm(face.landmarks, 112),
            rtol=1e-6,
            atol=1e-5,
        )
        ours = align_to_template(photo, face.landmarks, template, (112, 112))
        theirs = bgr(norm_crop(bgr(photo), face.landmarks, 112))
        # Same float32 estimate, same float64 matrix, same warp: the same pixels, bit for bit.
        np.testing.assert_array_equal(ours, theirs)


# --------------------------------------------------------------------------- embedding


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=1)


@pytest.mark.parametrize("pack_name", ["buffalo_l", "antelopev2"])
def test_embeddings_match_arcface_onnx(
    packs: dict[str, LoadedPack], photo: ImageArray, photo_faces: list[DetectedFace], pack_name: str
) -> None:
    pack = packs[pack_name]
    spec = pack.manifest.embedder
    template = np.asarray(spec.template, dtype=np.float32)
    reference = ArcFaceONNX(
        model_file=str(pack.embedder_path), session=one_thread_session(pack.embedder_path)
    )
    # insightface decides the normalization from the graph; the manifest's file table must agree.
    assert (reference.input_mean, reference.input_std) == (
        spec.normalization.mean[0],
        spec.normalization.std[0],
    )

    # Each side end to end from the same landmarks: our RGB chips and Embedder, insightface's BGR
    # norm_crop chips and get_feat.
    ours = Embedder(create_session(pack.embedder_path, CPU_ONE_THREAD), spec).embed(
        [align_to_template(photo, face.landmarks, template, spec.input_size) for face in photo_faces]
    )
    bgr_chips = [norm_crop(bgr(photo), face.landmarks, spec.input_size[0]) for face in photo_faces]
    theirs = reference.get_feat(bgr_chips)
    assert ours.shape == theirs.shape == (len(photo_faces), spec.embedding_size)
    assert cosines(ours, theirs).min() > 0.99999
    # Different faces give different embeddings (the comparison above is not between constants).
    assert cosines(ours[:1], ours[1:]).max() < 0.999

    # Negative controls: the wrong colour order, or no (x − 127.5) / 127.5, would be caught.
    assert cosines(ours, reference.get_feat([bgr(chip) for chip in bgr_chips])).min() < 0.999
    reference.input_mean, reference.input_std = 0.0, 1.0  # insightface's in-graph-normalization branch
    assert cosines(ours, reference.get_feat(bgr_chips)).min() < 0.999
