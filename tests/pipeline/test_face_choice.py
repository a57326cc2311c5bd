"""The face-choice policy: synthetic geometry for the rules, real celeba_wild photos for the point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.evaluation.image_files import read_image
from service.packs.loader import load_pack
from service.pipeline.face_choice import choose_face, doubtful_faces, rank_faces
from service.pipeline.face_pipeline import FacePipeline
from service.pipeline.types import DetectedFace
from service.settings import FacePolicy, Settings

SIZE = (640, 480)
# celeba_wild photos whose largest face is not the labelled person (found by comparing each face with
# the person's other photos); the person is nearer the centre.
LARGEST_IS_NOT_THE_SUBJECT = ["7313/009197.jpg", "7344/036296.jpg", "7300/049963.jpg"]


def face(x1: float, y1: float, x2: float, y2: float, score: float = 0.99) -> DetectedFace:
    return DetectedFace(
        box=np.asarray([x1, y1, x2, y2], np.float32), score=score, landmarks=np.zeros((5, 2), np.float32)
    )


def test_largest_centre_and_score_rank_as_documented() -> None:
    big_edge = face(480, 100, 640, 300, score=0.95)  # 160×200 at the right border
    central = face(270, 190, 370, 310, score=0.90)  # 100×120 in the middle
    sharp_small = face(20, 20, 60, 70, score=0.999)
    faces = [big_edge, central, sharp_small]
    assert choose_face(faces, SIZE, FacePolicy.LARGEST) == 0
    assert choose_face(faces, SIZE, FacePolicy.CENTRE) == 1
    assert choose_face(faces, SIZE, FacePolicy.SCORE) == 2
    assert rank_faces(faces, SIZE, FacePolicy.LARGEST) == [0, 1, 2]
    assert choose_face([], SIZE, FacePolicy.CENTRE) is None


def test_a_tiny_central_face_does_not_beat_the_subject() -> None:
    subject = face(120, 80, 360, 400)  # large, a little off-centre
    background = face(310, 230, 330, 250)  # 20 px, dead centre
    assert choose_face([subject, background], SIZE, FacePolicy.CENTRE) == 0


def test_a_low_score_face_cut_by_the_border_never_beats_a_clear_face() -> None:
    cut = face(-120, 100, 200, 470, score=0.70)  # bigger, but partly outside the frame
    clear = face(300, 150, 420, 300, score=0.98)
    for policy in FacePolicy:
        assert choose_face([cut, clear], SIZE, policy) == 1, policy
    assert doubtful_faces([cut, clear], *SIZE) == [True, False]
    # A confident face at the border is not doubtful: a close-up may be cut by the frame.
    confident_cut = face(-120, 100, 200, 470, score=0.999)
    assert doubtful_faces([confident_cut, clear], *SIZE) == [False, False]
    assert choose_face([confident_cut, clear], SIZE, FacePolicy.LARGEST) == 0


@pytest.fixture(scope="module")
def pipeline(default_pack_dir: Path) -> FacePipeline:
    # Full-size detection only: these tests are about the policies, not the coarse first pass (which
    # misses the bystander of 7313/009197.jpg, tests/pipeline/test_coarse_choice.py).
    settings = Settings(
        models_dir=default_pack_dir.parent, pack=default_pack_dir.name, device="cpu", det_coarse_input_size=0
    )
    return FacePipeline.from_pack(load_pack(default_pack_dir), settings)


@pytest.mark.parametrize("photo", LARGEST_IS_NOT_THE_SUBJECT)
def test_on_real_photos_centre_finds_the_subject_where_largest_does_not(
    photo: str, pipeline: FacePipeline, shared_faces: Path
) -> None:
    person = shared_faces / "celeba_wild" / photo.split("/")[0]
    threshold = pipeline.manifest.calibration.operating_points["default"].threshold
    references = []
    for other in sorted(person.glob("*.jpg")):
        faces, _ = pipeline.detect_chosen(read_image(other), FacePolicy.CENTRE)
        if other.name != Path(photo).name and len(faces) == 1:
            references.append(pipeline.analyze_sync(read_image(other))[0].embedding)
    assert len(references) >= 3
    reference = np.mean(references, axis=0)
    image = read_image(shared_faces / "celeba_wild" / photo)
    largest, _ = pipeline.analyze_chosen_sync(image, FacePolicy.LARGEST)
    centre, _ = pipeline.analyze_chosen_sync(image, FacePolicy.CENTRE)
    assert len(pipeline.detect(image)) >= 2
    assert largest is not None
    assert centre is not None
    reference /= np.linalg.norm(reference)
    assert float(centre.embedding @ reference) >= threshold
    assert float(largest.embedding @ reference) < threshold
