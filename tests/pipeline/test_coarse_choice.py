"""The coarse first detection pass: when it may settle the choice of face, and that it chooses alike."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.evaluation.image_files import read_image
from service.packs.loader import load_pack
from service.pipeline.coarse_choice import MISSED_SIDE_PX, CoarsePass
from service.pipeline.face_choice import choose_face, outranks_any_face_smaller_than
from service.pipeline.face_pipeline import FacePipeline
from service.pipeline.types import DetectedFace, ImageArray
from service.settings import FacePolicy, Settings

SIZE = (640, 480)
PORTRAIT = "deepface_testset/Jennifer/img53.jpg"  # the peer benchmark's one-face photo (1100×825)


def face(x1: float, y1: float, x2: float, y2: float, score: float = 0.99) -> DetectedFace:
    return DetectedFace(
        box=np.asarray([x1, y1, x2, y2], np.float32), score=score, landmarks=np.zeros((5, 2), np.float32)
    )


@pytest.mark.parametrize("side", [8.0, 32.0, 64.0, 100.0])
def test_a_face_outranks_every_smaller_face_exactly_when_its_merit_is_above_theirs(side: float) -> None:
    centred = face(320 - 60, 240 - 60, 320 + 60, 240 + 60)  # 120 px, in the middle
    # The best a smaller face could do: as large as allowed, score 1, dead centre.
    best_small = face(320 - side / 2, 240 - side / 2, 320 + side / 2, 240 + side / 2, score=1.0)
    for policy in (FacePolicy.LARGEST, FacePolicy.CENTRE):
        settled = outranks_any_face_smaller_than(centred, SIZE, policy, side)
        assert settled == (choose_face([best_small, centred], SIZE, policy) == 1 and side < 120)


def test_the_score_policy_and_border_cut_faces_are_never_settled_coarsely() -> None:
    assert not outranks_any_face_smaller_than(face(200, 100, 440, 380), SIZE, FacePolicy.SCORE, 8.0)
    cut = face(500, 100, 760, 380)  # half outside the frame
    assert not outranks_any_face_smaller_than(cut, SIZE, FacePolicy.LARGEST, 8.0)


@pytest.fixture(scope="module")
def pipelines(default_pack_dir: Path) -> tuple[FacePipeline, FacePipeline]:
    """(with the coarse pass at 320, without it)."""
    base = {"models_dir": default_pack_dir.parent, "pack": default_pack_dir.name, "device": "cpu"}
    pack = load_pack(default_pack_dir)
    return (
        FacePipeline.from_pack(pack, Settings(**base, det_coarse_input_size=320)),
        FacePipeline.from_pack(pack, Settings(**base, det_coarse_input_size=0)),
    )


def _resized(image: ImageArray, longest: int) -> ImageArray:
    height, width = image.shape[:2]
    scale = longest / max(width, height)
    resized = Image.fromarray(image).resize((round(width * scale), round(height * scale)), Image.LANCZOS)
    return np.asarray(resized)


def _coarse_pass(pipeline: FacePipeline) -> CoarsePass:
    coarse = pipeline._coarse
    assert coarse is not None
    return coarse


@pytest.mark.parametrize("policy", [FacePolicy.CENTRE, FacePolicy.LARGEST])
def test_a_clear_portrait_is_settled_coarsely_with_the_same_face_and_embedding(
    policy: FacePolicy, pipelines: tuple[FacePipeline, FacePipeline], shared_faces: Path
) -> None:
    with_coarse, without = pipelines
    image = _resized(read_image(shared_faces / PORTRAIT), 640)
    assert _coarse_pass(with_coarse).settle(image, policy) is not None
    coarse_face, _ = with_coarse.analyze_chosen_sync(image, policy)
    full_face, _ = without.analyze_chosen_sync(image, policy)
    assert coarse_face is not None
    assert full_face is not None
    iou = _iou(coarse_face.face.box, full_face.face.box)
    assert iou > 0.85
    assert float(coarse_face.embedding @ full_face.embedding) > 0.97


def test_small_faces_score_policy_and_small_images_go_to_the_full_pass(
    pipelines: tuple[FacePipeline, FacePipeline], shared_faces: Path
) -> None:
    coarse = _coarse_pass(pipelines[0])
    portrait = _resized(read_image(shared_faces / PORTRAIT), 640)
    assert coarse.settle(portrait, FacePolicy.SCORE) is None
    assert coarse.settle(_resized(portrait, 320), FacePolicy.CENTRE) is None  # not larger than coarse
    # The six people at insightface's table photo are too small at 320 for trusted landmarks.
    group = read_image(Path(str(resources.files("insightface") / "data" / "images" / "t1.jpg")))
    assert coarse.settle(group, FacePolicy.CENTRE) is None
    faces, index = pipelines[0].detect_chosen(group, FacePolicy.CENTRE)
    assert len(faces) == 6  # the full pass ran
    assert index is not None


def test_the_coarse_pass_rarely_misses_a_face_the_settle_rule_counts_on(
    pipelines: tuple[FacePipeline, FacePipeline], shared_faces: Path
) -> None:
    # The settle rule assumes the coarse pass misses only faces below MISSED_SIDE_PX coarse pixels.
    # That is not a law: celeba_wild 7313/009197 has a 139×173 px face (score 0.92) that the
    # 320 pass does not find. It must stay rare; the net effect is measured in docs/evaluation.md.
    photos = [read_image(p) for p in sorted((shared_faces / "celeba_wild").rglob("*.jpg"))[::20]]
    photos.append(read_image(shared_faces / "celeba_wild" / "7313" / "009197.jpg"))
    coarse = _coarse_pass(pipelines[0])
    large, missed = 0, 0
    for image in photos:
        scale = coarse.input_size / max(image.shape[:2])
        if scale >= 1:
            continue
        coarse_faces = coarse.detector.detect(image)
        for full in pipelines[1].detect(image):
            if min(full.width, full.height) * scale >= MISSED_SIDE_PX:
                large += 1
                missed += not any(_iou(full.box, c.box) > 0.3 for c in coarse_faces)
    assert large >= 60
    assert missed >= 1  # the known case above
    assert missed / large < 0.05


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, float(x2 - x1)) * max(0.0, float(y2 - y1))
    area = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]))
    return inter / (area - inter)
