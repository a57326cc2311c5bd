"""``--align``: detect and align raw photos into an identity-per-folder set of chips, once.

The service's own detector (from a model pack) finds the largest face of each photo and
``align_to_template`` warps it onto a 5-point template scaled to the backbone's input, so the trained
model sees the same geometry the exported pack will declare. Results are cached: photos already
aligned are skipped on the next run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from models.training.dataset import scan_identities

Template = tuple[tuple[float, float], ...]


def _arcface_template() -> tuple[Template, tuple[int, int]]:
    from service.packs.insightface import ARCFACE_TEMPLATE_112

    return ARCFACE_TEMPLATE_112, (112, 112)


def _dlib_template() -> tuple[Template, tuple[int, int]]:
    from export.chip_template import DLIB_CHIP_TEMPLATE_150

    return DLIB_CHIP_TEMPLATE_150, (150, 150)


# name -> (template points, the chip size they are given for)
TEMPLATES: Mapping[str, Callable[[], tuple[Template, tuple[int, int]]]] = MappingProxyType(
    {"arcface": _arcface_template, "dlib": _dlib_template}
)


def scaled_template(name: str, size: tuple[int, int]) -> np.ndarray:
    """A named template's 5 points for a chip of ``size`` (width, height)."""
    try:
        points, (base_width, base_height) = TEMPLATES[name]()
    except KeyError:
        raise KeyError(f"unknown template {name!r}; known: {', '.join(TEMPLATES)}") from None
    scale = np.array([size[0] / base_width, size[1] / base_height], dtype=np.float32)
    return np.asarray(points, dtype=np.float32) * scale


@dataclass(frozen=True)
class AlignmentSummary:
    aligned: int  # newly aligned this run
    cached: int  # already present from an earlier run
    no_face: tuple[str, ...]  # photos skipped because no face was found (relative paths)


def align_dataset(
    source: Path,
    destination: Path,
    *,
    pack_dir: Path,
    template: np.ndarray,
    size: tuple[int, int],
    progress: bool = True,
) -> AlignmentSummary:
    """Align every photo of ``source/<identity>/`` into ``destination/<identity>/<stem>.png``."""
    from service.packs.loader import load_pack
    from service.pipeline.align import align_to_template
    from service.pipeline.detect import DetectionOptions, build_detector
    from service.pipeline.runtime import RuntimeOptions, create_session
    from service.settings import ExecutionDevice, Settings

    pack = load_pack(pack_dir)
    session = create_session(pack.detector_path, RuntimeOptions(device=ExecutionDevice.CPU))
    detector = build_detector(
        pack.manifest.detector, session, DetectionOptions.from_settings(Settings(), pack.manifest.detector)
    )

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
