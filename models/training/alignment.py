"""``--align``: detect and align raw photos into an identity-per-folder set of chips, once.

A pack's detector (the service's own detection code, ``pack_detector``) finds the largest face of each
photo and ``align_to_template`` warps it onto a named chip convention's 5-point template scaled to the
backbone's input, so the trained model sees the same geometry the exported pack will declare. Every
detection option is passed in: no service setting reaches training. Results are cached: photos already
aligned are skipped on the next run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from models.training.dataset import scan_identities
from service.packs.conventions import ARCFACE_112, DLIB_150, ChipConvention

if TYPE_CHECKING:
    from service.pipeline.detect import FaceDetector

# face-train's ``--template`` names -> the chip convention whose template they scale.
TEMPLATES: Mapping[str, ChipConvention] = MappingProxyType({"arcface": ARCFACE_112, "dlib": DLIB_150})
# How photos are detected for alignment: the service's default detection (not its FACE_* settings).
DETECTION_INPUT_SIZE = 640
DETECTION_MAX_FACES = 32
DETECTION_MIN_FACE_SIZE = 16


def scaled_template(name: str, size: tuple[int, int]) -> np.ndarray:
    """A named template's 5 points for a chip of ``size`` (width, height)."""
    try:
        convention = TEMPLATES[name]
    except KeyError:
        raise KeyError(f"unknown template {name!r}; known: {', '.join(TEMPLATES)}") from None
    return convention.scaled_template(size)


def pack_detector(
    pack_dir: Path,
    *,
    input_size: int = DETECTION_INPUT_SIZE,
    max_faces: int = DETECTION_MAX_FACES,
    min_face_size: int = DETECTION_MIN_FACE_SIZE,
) -> FaceDetector:
    """The detector of the pack in ``pack_dir`` on the CPU, with its recommended thresholds."""
    from service.packs.loader import load_pack
    from service.pipeline.detect import DetectionOptions
    from service.pipeline.detectors import load_detector
    from service.pipeline.runtime import RuntimeOptions
    from service.settings import ExecutionDevice

    pack = load_pack(pack_dir)
    options = DetectionOptions.for_spec(
        pack.manifest.detector, input_size=input_size, max_faces=max_faces, min_face_size=min_face_size
    )
    return load_detector(pack, RuntimeOptions(device=ExecutionDevice.CPU), options)


@dataclass(frozen=True)
class AlignmentSummary:
    aligned: int  # newly aligned this run
    cached: int  # already present from an earlier run
    no_face: tuple[str, ...]  # photos skipped because no face was found (relative paths)


def align_dataset(
    source: Path,
    destination: Path,
    *,
    detector: FaceDetector,
    template: np.ndarray,
    size: tuple[int, int],
    progress: bool = True,
) -> AlignmentSummary:
    """Align every photo of ``source/<identity>/`` into ``destination/<identity>/<stem>.png``."""
    from service.pipeline.align import align_to_template

    aligned = cached = 0
    no_face: list[str] = []
    photos = [(identity.name, path) for identity in scan_identities(source) for path in identity.images]
    for identity, path in tqdm(photos, desc="aligning", unit="photo", disable=not progress):
        target = destination / identity / f"{path.stem}.png"
        if target.exists():
            cached += 1
            continue
        with Image.open(path) as opened:
            image = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"), dtype=np.uint8)
        faces = detector.detect(np.ascontiguousarray(image))
        if not faces:
            no_face.append(f"{identity}/{path.name}")
            continue
        chip = align_to_template(image, faces[0].landmarks, template, size)  # faces[0]: the largest
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.partial")  # not an image suffix: never scanned
        Image.fromarray(chip).save(temporary, format="PNG")
        temporary.replace(target)
        aligned += 1
    if no_face:
        (destination / "no_face.txt").write_text("\n".join(no_face) + "\n")
    return AlignmentSummary(aligned=aligned, cached=cached, no_face=tuple(no_face))
