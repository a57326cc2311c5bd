"""face-export export: registered backbones -> ONNX -> pack, with parity checks that can fail."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.cli import load_backbone_checkpoint, main
from export.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx
from export.pack_writer import EmbedderPackRequest, embedding_fingerprint, write_embedder_pack
from export.parity import (
    ParityError,
    check_parity,
    load_chip_folder,
    normalize_chips,
    random_inputs,
    require_parity,
)
from export.retinaface_extract import write_retinaface_onnx
from models.registry import backbone_entry, build_backbone
from service.packs.conventions import ARCFACE_112, ARCFACE_NORMALIZATION, ARCFACE_TEMPLATE_112
from service.packs.files import sha256_file
from service.packs.loader import load_pack
from service.packs.manifest import Calibration, EmbedderSpec, OperatingPoint, Provenance


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _initialised(
    backbone: str, *, embedding_size: int, seed: int, input_size: tuple[int, int] = (112, 112)
) -> torch.nn.Module:
    """A random backbone whose BatchNorm statistics match its activations, as after training.

    Straight after initialisation the running statistics are (0, 1) and an iresnet's outputs reach
    ~1e8, where float32 rounding alone exceeds any absolute tolerance.
    """
    torch.manual_seed(seed)
    model = build_backbone(backbone, embedding_size=embedding_size)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for batch in range(2):
            model(torch.from_numpy(random_inputs(input_size, ARCFACE_NORMALIZATION, n=16, seed=100 + batch)))
    return model.eval()


def _checkpoint(tmp_path: Path, backbone: str, *, embedding_size: int, seed: int) -> Path:
    model = _initialised(backbone, embedding_size=embedding_size, seed=seed)
    path = tmp_path / f"{backbone}.pth"
    torch.save(model.state_dict(), path)  # arcface_torch's backbone.pth is a bare state dict
    return path


def _real_chips(shared_faces: Path, size: int) -> np.ndarray:
    return normalize_chips(
        load_chip_folder(shared_faces / "dlib_johns", (size, size), limit=12), ARCFACE_NORMALIZATION
    )


def test_iresnet18_checkpoint_to_pack_via_cli(
    tmp_path: Path, shared_faces: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="export.pack_writer")
    checkpoint = _checkpoint(tmp_path, "iresnet18", embedding_size=128, seed=0)
    out = tmp_path / "r18"
    rc = main(
        [
            "export",
            "--backbone", "iresnet18",
            "--checkpoint", str(checkpoint),
            "--embedding-size", "128",
            "--out", str(out),
            "--parity-images", str(shared_faces / "dlib_johns"),
            "--license", "test weights",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    printed = captured.out
    assert "pack iresnet18-" in printed
    assert "parity on random inputs: n=16" in caplog.text
    assert "parity on " + str(shared_faces / "dlib_johns") + ": n=55" in caplog.text

    pack = load_pack(out)  # verifies every sha256
    manifest = pack.manifest
    fingerprint = embedding_fingerprint(sha256_file(pack.embedder_path), manifest.embedder)
    assert manifest.id == f"iresnet18-{fingerprint[:8]}"
    embedder = manifest.embedder
    assert (embedder.input_name, embedder.output_name) == (INPUT_NAME, OUTPUT_NAME)
    assert embedder.input_size == (112, 112)
    assert embedder.embedding_size == 128
    assert embedder.template == ARCFACE_TEMPLATE_112
    assert embedder.normalization == ARCFACE_NORMALIZATION
    assert embedder.provenance.license == "test weights"
    assert manifest.detector.decoder.kind == "retinaface"

    # The pack's ONNX reproduces the checkpoint on real face chips, at a batch size other than export's.
    model = load_backbone_checkpoint("iresnet18", checkpoint, embedding_size=128)
    session = ort.InferenceSession(str(pack.embedder_path), providers=["CPUExecutionProvider"])
    chips = _real_chips(shared_faces, 112)
    (onnx_out,) = session.run([OUTPUT_NAME], {INPUT_NAME: chips})
    with torch.no_grad():
        torch_out = model(torch.from_numpy(chips)).numpy()
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4, rtol=0)


def test_fp16_copy_is_not_offered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing in the service loads an fp16 file (TensorRT builds fp16 engines from the fp32 one).
    checkpoint = _checkpoint(tmp_path, "mobilefacenet", embedding_size=128, seed=1)
    with pytest.raises(SystemExit) as exited:
        main(["export", "--backbone", "mobilefacenet", "--checkpoint", str(checkpoint),
              "--out", str(tmp_path / "mbf"), "--fp16"])  # fmt: skip
    assert exited.value.code == 2
    assert "unrecognized arguments: --fp16" in capsys.readouterr().err
    assert not (tmp_path / "mbf").exists()


def test_parity_detects_a_different_model(tmp_path: Path) -> None:
    exported = _initialised("mobilefacenet", embedding_size=128, seed=0)
    path = export_onnx(exported, input_size=(112, 112), path=tmp_path / "m.onnx")
    inputs = random_inputs((112, 112), ARCFACE_NORMALIZATION, n=4)
    same = require_parity(check_parity(exported, path, inputs), what="the exported model")
    assert same.max_abs_diff <= 1e-4
    assert same.n == 4

    other = _initialised("mobilefacenet", embedding_size=128, seed=1)
    report = check_parity(other, path, inputs)
    with pytest.raises(ParityError, match="parity failed on another model"):
        require_parity(report, what="another model")


def test_wrong_checkpoint_fails_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = _checkpoint(tmp_path, "mobilefacenet", embedding_size=128, seed=0)
    rc = main(
        ["export", "--backbone", "iresnet18", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x")]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "does not fit backbone iresnet18" in err
    assert not (tmp_path / "x").exists()


def test_template_must_match_backbone_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = _checkpoint(tmp_path, "mobilefacenet", embedding_size=128, seed=0)
    rc = main(
        ["export", "--backbone", "mobilefacenet", "--checkpoint", str(checkpoint), "--embedding-size", "128",
         "--template", "dlib150", "--out", str(tmp_path / "x")]
    )  # fmt: skip
    assert rc == 1
    assert "takes (112, 112) inputs but template dlib150 makes (150, 150) chips" in capsys.readouterr().err


def test_failed_rebuild_keeps_the_old_pack_and_leaves_no_staging(tmp_path: Path) -> None:
    model = _initialised("mobilefacenet", embedding_size=128, seed=0)
    out = tmp_path / "packs" / "mbf"
    request = EmbedderPackRequest(
        out_dir=out,
        convention=ARCFACE_112,
        embedding_size=128,
        id_prefix="mbf",
        description="test",
        provenance=Provenance(source="random init", license="none"),
        calibration=Calibration(operating_points={"default": OperatingPoint(threshold=0.3)}),
        write_detector=write_retinaface_onnx,
    )
    first = write_embedder_pack(model, request)
    before = {name: sha256_file(out / name) for name in first.manifest.files}

    empty = tmp_path / "no_chips"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        write_embedder_pack(
            build_backbone("mobilefacenet", embedding_size=128), _with(request, parity_images=empty)
        )
    assert load_pack(out).manifest == first.manifest
    assert {name: sha256_file(out / name) for name in before} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["mbf"]


def _with(request: EmbedderPackRequest, **changes: object) -> EmbedderPackRequest:
    from dataclasses import replace

    return replace(request, **changes)  # type: ignore[arg-type]


def test_pack_id_fingerprint_follows_everything_that_changes_embeddings() -> None:
    spec = ARCFACE_112
    embedder = EmbedderSpec(
        file="embedder.onnx",
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        input_size=spec.input_size,
        normalization=spec.normalization,
        template=spec.template,
        template_derivation=spec.template_derivation,
        embedding_size=512,
        provenance=Provenance(source="x", license="y"),
    )
    base = embedding_fingerprint("a" * 64, embedder)
    assert embedding_fingerprint("a" * 64, embedder) == base
    assert embedding_fingerprint("b" * 64, embedder) != base
    assert embedding_fingerprint("a" * 64, embedder.model_copy(update={"flip_augmentation": True})) != base
    shifted = tuple((x + 1.0, y) for x, y in spec.template)
    assert embedding_fingerprint("a" * 64, embedder.model_copy(update={"template": shifted})) != base
    # Provenance and file names do not change embeddings, so they do not change the id.
    renamed = embedder.model_copy(
        update={"file": "other.onnx", "provenance": Provenance(source="z", license="y")}
    )
    assert embedding_fingerprint("a" * 64, renamed) == base


ORL_IDENTITIES = [f"s{i}" for i in range(1, 9)]


@pytest.fixture(scope="module")
def orl_subset(shared_faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 real ORL identities (10 photos each): enough for face-train's 5 trained / 3 held out."""
    source = shared_faces / "orl_att_faces"
    subset = tmp_path_factory.mktemp("orl_subset")
    for name in ORL_IDENTITIES:
        (subset / name).symlink_to(source / name, target_is_directory=True)
    return subset


@pytest.fixture(scope="module", params=[False, True], ids=["unaligned", "aligned"])
def face_train_run(
    request: pytest.FixtureRequest, orl_subset: Path, default_pack_dir: Path, tmp_path_factory
) -> tuple[bool, Path]:
    """A real ``face-train train`` run (iresnet_tiny, 1 epoch), with and without ``--align``."""
    from models.training.cli import main as face_train

    align: bool = request.param
    out = tmp_path_factory.mktemp("aligned-run" if align else "unaligned-run")
    argv = ["train", "--data", str(orl_subset), "--out", str(out), "--backbone", "iresnet_tiny",
            "--epochs", "1", "--batch-size", "16", "--holdout", "3", "--n-folds", "5",
            "--fars", "0.1", "--threads", "1", "--no-progress"]  # fmt: skip
    if align:
        argv += ["--align", "--align-pack", str(default_pack_dir)]
    assert face_train(argv) == 0
    return align, out / "checkpoints" / "last.pt"


def _orl_chips(orl_subset: Path, size: tuple[int, int]) -> np.ndarray:
    """Real ORL photos as face-train feeds them: resized, RGB, (x − 127.5) / 127.5."""
    from models.training.dataset import load_face_image, to_model_input

    photos = sorted(orl_subset.glob("s[1-3]/*.pgm"))[:12]
    images = np.stack([load_face_image(path, size) for path in photos]).transpose(0, 3, 1, 2)
    return to_model_input(torch.from_numpy(np.ascontiguousarray(images))).numpy()


def _legacy_copy(checkpoint: Path, out: Path) -> Path:
    """The same run as checkpoints before ``aligned`` was recorded: ``template: None`` when unaligned."""
    from models.training.checkpoint import load_checkpoint, save_checkpoint

    data = load_checkpoint(checkpoint)
    aligned = data["preprocessing"].pop("aligned")
    if not aligned:
        data["preprocessing"]["template"] = None
    data.pop("format")
    return save_checkpoint(data, out)


@pytest.mark.parametrize("output", ["last.pt", "legacy last.pt", "backbone.pth"])
def test_every_face_train_output_exports_with_parity(
    face_train_run: tuple[bool, Path],
    output: str,
    orl_subset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from models.training.alignment import scaled_template
    from models.training.checkpoint import load_embedder

    align, checkpoint = face_train_run
    torch_model = load_embedder(checkpoint)
    if output == "legacy last.pt":
        checkpoint = _legacy_copy(checkpoint, tmp_path / "legacy.pt")
    elif output == "backbone.pth":  # the bare state dict face-train writes beside its checkpoints
        checkpoint = checkpoint.parents[1] / "backbone.pth"
    out = tmp_path / "pack"
    rc = main(["export", "--backbone", "iresnet_tiny", "--checkpoint", str(checkpoint), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    pack = load_pack(out)  # verifies every sha256
    assert sorted(pack.manifest.files) == ["detector.onnx", "embedder.onnx"]  # no unused fp16 copy
    embedder = pack.manifest.embedder
    assert embedder.input_size == (64, 64)
    assert embedder.embedding_size == backbone_entry("iresnet_tiny").default_embedding_size
    assert embedder.fp16_file is None
    assert embedder.normalization == ARCFACE_NORMALIZATION
    np.testing.assert_allclose(embedder.template, scaled_template("arcface", (64, 64)), atol=1e-4)
    if output != "backbone.pth":  # a bare state dict cannot say how it was trained
        assert ("without --align" in embedder.template_derivation.method) is not align

    # The pack's ONNX reproduces the trained PyTorch backbone on real ORL photos.
    chips = _orl_chips(orl_subset, (64, 64))
    session = ort.InferenceSession(str(pack.embedder_path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run([OUTPUT_NAME], {INPUT_NAME: chips})
    with torch.no_grad():
        torch_out = torch_model(torch.from_numpy(chips)).numpy()
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4, rtol=0)

    rc = main(["export", "--backbone", "iresnet18", "--checkpoint", str(checkpoint), "--out", str(out)])
    assert rc == 1
    expected = (
        "does not fit backbone iresnet18" if output == "backbone.pth" else "was trained as iresnet_tiny"
    )
    assert expected in capsys.readouterr().err


def test_refuses_to_replace_a_folder_that_is_not_a_pack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = _checkpoint(tmp_path, "mobilefacenet", embedding_size=128, seed=0)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"not a model")
    args = [
        "export",
        "--backbone",
        "mobilefacenet",
        "--embedding-size",
        "128",
        "--checkpoint",
        str(checkpoint),
    ]
    assert main([*args, "--out", str(photos)]) == 1
    assert "is not a pack" in capsys.readouterr().err
    assert (photos / "holiday.jpg").read_bytes() == b"not a model"
