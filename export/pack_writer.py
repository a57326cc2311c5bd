"""Write a pack folder atomically: ONNX files plus ``manifest.json`` with the sha256 of every file.

Files are staged in a hidden temporary folder next to the destination, fsynced, and the folder is
renamed into place only after the manifest is written, so a half-built pack never looks valid.
``write_embedder_pack`` is the one path from a PyTorch embedder to a pack: detector, ONNX export,
parity checks (random inputs always, real chips when given), manifest. No fp16 copy: the service
would never load one (TensorRT, ``FACE_TENSORRT=true``, builds fp16 engines from the fp32 file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from export.onnx_export import INPUT_NAME, OUTPUT_NAME, ExportError, export_onnx
from export.parity import (
    ParityReport,
    check_parity,
    load_chip_folder,
    normalize_chips,
    random_inputs,
    require_parity,
)
from service.atomic_files import fsync_dir
from service.packs.conventions import ChipConvention
from service.packs.files import sha256_file, write_manifest
from service.packs.loader import load_pack
from service.packs.manifest import (
    MANIFEST_FILE,
    Calibration,
    DetectorSpec,
    EmbedderSpec,
    PackManifest,
    Provenance,
)

logger = logging.getLogger(__name__)

DETECTOR_FILE = "detector.onnx"
EMBEDDER_FILE = "embedder.onnx"
# Written by earlier versions (never loaded by the service, so no longer written): a rebuild may replace it.
EMBEDDER_FP16_FILE = "embedder_fp16.onnx"
PARITY_RANDOM_SAMPLES = 16


class PackStaging:
    """A temporary folder collecting a pack's files until ``commit`` moves it to ``out_dir``."""

    def __init__(self, out_dir: Path, path: Path) -> None:
        self.out_dir = out_dir
        self.path = path

    def file(self, name: str) -> Path:
        """Where to write the pack file ``name`` (a relative name) inside the staging folder."""
        target = (self.path / name).resolve()
        if not target.is_relative_to(self.path.resolve()) or target == self.path.resolve():
            raise ValueError(f"pack file name escapes the pack folder: {name!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def file_hashes(self) -> dict[str, str]:
        """sha256 of every file staged so far, by relative POSIX name."""
        return {
            path.relative_to(self.path).as_posix(): sha256_file(path)
            for path in sorted(self.path.rglob("*"))
            if path.is_file() and path.name != MANIFEST_FILE
        }

    def commit(self, manifest: PackManifest) -> Path:
        """Check the manifest lists exactly the staged files, write it, and move the pack into place."""
        staged = self.file_hashes()
        if manifest.files != staged:
            raise ValueError(
                "manifest files do not match the staged files: "
                f"listed {sorted(manifest.files)}, staged {sorted(staged)} (or a sha256 differs)"
            )
        for path in self.path.rglob("*"):
            if path.is_file():
                _fsync_file(path)
        write_manifest(self.path, manifest).chmod(0o644)
        load_pack(self.path, verify=True)  # the loader's own checks, before anything is replaced
        _replace_dir(self.path, self.out_dir)
        return self.out_dir


@contextlib.contextmanager
def stage_pack(out_dir: Path) -> Iterator[PackStaging]:
    """Yield a ``PackStaging`` next to ``out_dir``; the staging folder is removed unless committed."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the pack from a service running as another user
    try:
        yield PackStaging(out_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_dir(staging: Path, out_dir: Path) -> None:
    # Rename is atomic within one file system; an existing pack is moved aside first and removed
    # after, so at every moment out_dir is either the old complete pack, absent, or the new one.
    old: Path | None = None
    if out_dir.exists() or out_dir.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.rename(out_dir, old / out_dir.name)
    try:
        os.rename(staging, out_dir)
    except OSError:
        if old is not None:  # put the previous pack back rather than leave none
            os.rename(old / out_dir.name, out_dir)
            old.rmdir()
        raise
    fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


@dataclass(frozen=True)
class EmbedderPackRequest:
    """Everything ``write_embedder_pack`` needs besides the module itself."""

    out_dir: Path
    convention: ChipConvention
    embedding_size: int
    id_prefix: str  # the pack id is "<id_prefix>-<first 8 hex of embedding_fingerprint>"
    description: str
    provenance: Provenance
    calibration: Calibration
    write_detector: Callable[[Path], DetectorSpec]  # writes the detector ONNX, returns its spec
    flip_augmentation: bool = False
    parity_images: Path | None = None
    created_by: str = "face-export"


@dataclass(frozen=True)
class PackBuildResult:
    pack_dir: Path
    manifest: PackManifest
    parity: dict[str, ParityReport] = field(default_factory=dict)  # "random", "images"


def write_embedder_pack(model: nn.Module, request: EmbedderPackRequest) -> PackBuildResult:
    """Export ``model`` with a detector into a verified pack at ``request.out_dir`` (atomically).

    Raises ``ParityError`` when the ONNX graph does not reproduce the module (max |Δ| > 1e-4 or
    cosine < 0.9999 on random inputs or on the given chips), ``ExportError`` on other failures.
    """
    convention = request.convention
    _check_replaceable(request.out_dir)
    model = model.eval().float().cpu()
    _check_embedding_size(model, convention.input_size, request.embedding_size)
    reports: dict[str, ParityReport] = {}
    with stage_pack(request.out_dir) as staging:
        # The spec must name the file as the pack does, whatever the writer put in it.
        detector_spec = request.write_detector(staging.file(DETECTOR_FILE))
        detector = detector_spec.model_copy(update={"file": DETECTOR_FILE})
        embedder_path = export_onnx(model, input_size=convention.input_size, path=staging.file(EMBEDDER_FILE))

        inputs = random_inputs(convention.input_size, convention.normalization, n=PARITY_RANDOM_SAMPLES)
        reports["random"] = require_parity(check_parity(model, embedder_path, inputs), what="random inputs")
        logger.info("parity on random inputs: %s", reports["random"].summary())
        if request.parity_images is not None:
            chips = normalize_chips(
                load_chip_folder(request.parity_images, convention.input_size), convention.normalization
            )
            reports["images"] = require_parity(
                check_parity(model, embedder_path, chips), what=f"chips in {request.parity_images}"
            )
            logger.info("parity on %s: %s", request.parity_images, reports["images"].summary())

        files = staging.file_hashes()
        embedder = EmbedderSpec(
            file=EMBEDDER_FILE,
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            input_size=convention.input_size,
            normalization=convention.normalization,
            template=convention.template,
            template_derivation=convention.template_derivation,
            embedding_size=request.embedding_size,
            flip_augmentation=request.flip_augmentation,
            provenance=request.provenance,
        )
        manifest = PackManifest(
            id=f"{request.id_prefix}-{embedding_fingerprint(files[EMBEDDER_FILE], embedder)[:8]}",
            description=request.description,
            detector=detector,
            embedder=embedder,
            calibration=request.calibration,
            files=files,
            created_by=request.created_by,
        )
        pack_dir = staging.commit(manifest)
    logger.info("wrote pack %s to %s", manifest.id, pack_dir)
    return PackBuildResult(pack_dir=pack_dir, manifest=manifest, parity=reports)


def embedding_fingerprint(embedder_sha256: str, embedder: EmbedderSpec) -> str:
    """sha256 over what fixes a face's embedding: the embedder's bytes and how chips are made and fed.

    Pack ids end with its first 8 hex digits, so galleries (pinned to a pack id) never mix
    embeddings from different weights, templates, normalizations or flip settings.
    """
    facts = {
        "embedder_sha256": embedder_sha256,
        "input_size": embedder.input_size,
        "normalization": embedder.normalization.model_dump(mode="json"),
        "template": embedder.template,
        "flip_augmentation": embedder.flip_augmentation,
        "embedding_size": embedder.embedding_size,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a folder that is not a pack: ``--out ~/photos`` must not delete photos."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder")
    pack_names = {MANIFEST_FILE, DETECTOR_FILE, EMBEDDER_FILE, EMBEDDER_FP16_FILE}
    if (out_dir / MANIFEST_FILE).is_file() or {p.name for p in out_dir.iterdir()} <= pack_names:
        return
    raise ExportError(f"{out_dir} holds files and is not a pack (no {MANIFEST_FILE}); choose another --out")


def _check_embedding_size(model: nn.Module, input_size: tuple[int, int], declared: int) -> None:
    width, height = input_size
    with torch.no_grad():
        output = model(torch.zeros(2, 3, height, width))
    if output.ndim != 2 or output.shape[1] != declared:
        raise ExportError(
            f"the model returns shape {tuple(output.shape)} for a batch of 2; expected (2, {declared}) "
            "(check --embedding-size)"
        )
