"""The ensemble pack (``face-export ensemble-pack``, ``FACE_PACK=ensemble``): SFace ⊕ dlib.

Built from the fp32 (RetinaFace + SFace) and dlib (RetinaFace + dlib ResNet) packs, both cached
builds: the same detector, both embedders, and the ensemble's crop geometry. Member weights were chosen
on ``celeba_wild`` (``MEMBER_PROCEDURE``): the weighted cosine ``α·cos_sface + (1 − α)·cos_dlib`` was
scanned for α in 0.1…1.0 on the two packs' embeddings of the same detected faces.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Final

import numpy as np

from export.default_pack import DEFAULT_OPERATING_POINT, FP32_PACK, build_sface_pack
from export.dlib_pack import build_dlib_pack
from export.pack_cache import PackRecipe, build_cached
from export.pack_writer import DETECTOR_FILE, embedding_fingerprint, stage_pack
from service.packs.loader import load_pack
from service.packs.manifest import (
    Calibration,
    EmbedderSpec,
    EnsembleMember,
    EnsembleSpec,
    OperatingPoint,
    PackManifest,
    Point,
)
from service.pipeline.align import estimate_similarity

logger = logging.getLogger(__name__)

RECIPE: Final = "face-export ensemble-pack recipe 2 (sface+dlib, member ids)"
PACK_ID_PREFIX: Final = "ensemble-sface-dlib"
SFACE_SHARE: Final = 0.2  # α: the SFace cosine's share of the ensemble cosine
MEMBER_PROCEDURE: Final = (
    "weights w = (sqrt(α), sqrt(1 − α)) so that the cosine is α·cos_sface + (1 − α)·cos_dlib; α scanned "
    "over 0.1..1.0 on celeba_wild (2,233 photos, 7,533 genuine / 2,484,495 impostor pairs, RetinaFace, "
    "face policy centre): TAR@FAR=1e-3 0.906 (α=1, SFace alone), 0.908 (0.9), 0.912 (0.7), 0.918 (0.5), "
    "0.922 (0.3), 0.921 (0.2), 0.909 (0.1); TPIR@FPIR=1e-2 0.627, 0.624, 0.611, 0.607, 0.614, 0.644, 0.677; "
    "α = 0.2 is best on both together"
)
OPERATING_POINTS: Final[dict[str, tuple[float, float]]] = {
    "far=1e-2": (0.7812, 1e-2),
    "far=1e-3": (0.8087, 1e-3),
    "far=1e-4": (0.8351, 1e-4),
}
CALIBRATION_SOURCE: Final = (
    "celeba_wild (299 people, 2,233 in-the-wild photos, 2,484,495 impostor pairs), full pipeline of this "
    "pack, face policy centre: python -m benchmarks.wild_eval"
)


def calibration() -> Calibration:
    points = {
        name: OperatingPoint(threshold=threshold, far=far, source=CALIBRATION_SOURCE)
        for name, (threshold, far) in OPERATING_POINTS.items()
    }
    return Calibration(operating_points={**points, "default": points[DEFAULT_OPERATING_POINT]})


def build_ensemble_pack(out_dir: Path, *, force: bool = False) -> Path:
    """Build the ensemble into ``out_dir`` (and its member packs beside it) unless it is current."""
    recipe = PackRecipe(
        name="ensemble",
        created_by=RECIPE,
        build=_build,
        difference=lambda manifest: None if manifest.calibration == calibration() else "calibration differs",
    )
    return build_cached(recipe, out_dir, force=force)


def _build(out_dir: Path) -> None:
    # The fp32 SFace pack: the member weights and thresholds were measured with it.
    sface = load_pack(build_sface_pack(FP32_PACK, out_dir.parent / "fp32"))
    dlib = load_pack(build_dlib_pack(out_dir.parent / "dlib"))
    if sface.manifest.detector != dlib.manifest.detector:
        raise ValueError("the fp32 and dlib packs must share one detector for the ensemble")
    members = [
        (sface, "embedder_sface.onnx", math.sqrt(SFACE_SHARE)),
        (dlib, "embedder_dlib.onnx", math.sqrt(1 - SFACE_SHARE)),
    ]
    with stage_pack(out_dir) as staging:
        shutil.copyfile(sface.detector_path, staging.file(DETECTOR_FILE))
        specs = []
        for pack, name, weight in members:
            shutil.copyfile(pack.embedder_path, staging.file(name))
            specs.append(
                EnsembleMember(
                    embedder=pack.manifest.embedder.model_copy(update={"file": name}), weight=weight
                )
            )
        crop_size, crop_template = crop_geometry([spec.embedder for spec in specs])
        ensemble = EnsembleSpec(
            crop_size=crop_size, crop_template=crop_template, members=tuple(specs), procedure=MEMBER_PROCEDURE
        )
        files = staging.file_hashes()
        # Member pack ids follow their embedding functions (not file bytes, which exact rewrites change).
        fingerprint = "".join(pack.manifest.id for pack, _, _ in members) + repr([s.weight for s in specs])
        manifest = PackManifest(
            id=f"{PACK_ID_PREFIX}-{embedding_fingerprint(fingerprint, specs[0].embedder)[:8]}",
            description=(
                "Ensemble pack: RetinaFace MobileNet-0.25 + SFace (128-d, weight sqrt(0.2)) ⊕ dlib ResNet "
                "(128-d, flip TTA, weight sqrt(0.8)); one 256-d unit embedding, cosine = 0.2·cos_sface + "
                "0.8·cos_dlib."
            ),
            detector=sface.manifest.detector.model_copy(update={"file": DETECTOR_FILE}),
            embedder=specs[0].embedder,
            ensemble=ensemble,
            calibration=calibration(),
            files=files,
            created_by=RECIPE,
        )
        staging.commit(manifest)
    logger.info("wrote pack %s to %s", manifest.id, out_dir)


def crop_geometry(
    members: list[EmbedderSpec],
) -> tuple[tuple[int, int], tuple[Point, Point, Point, Point, Point]]:
    """A crop covering every member's chip, at the finest member's resolution (no member is upsampled).

    Coordinates are the first member's chip frame; each other member's chip corners are mapped into it
    through the similarity between the two templates.
    """
    base = np.asarray(members[0].template, dtype=np.float64)
    corners, density = [], 1.0
    for spec in members:
        width, height = spec.input_size
        to_base = estimate_similarity(np.asarray(spec.template, np.float32), base.astype(np.float32))
        box = np.asarray([[0, 0], [width, 0], [0, height], [width, height]], dtype=np.float64)
        corners.append(box @ to_base[:, :2].T + to_base[:, 2])
        # Chip pixels per base pixel: the member's scale relative to the base frame.
        density = max(density, 1.0 / float(np.hypot(*to_base[:, 0])))
    points = np.concatenate(corners)
    low, high = points.min(axis=0), points.max(axis=0)
    size = np.ceil((high - low) * density).astype(int)
    template = (base - low) * density
    pairs = [(float(x), float(y)) for x, y in template]
    return (int(size[0]), int(size[1])), (pairs[0], pairs[1], pairs[2], pairs[3], pairs[4])
