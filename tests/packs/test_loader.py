"""load_pack: manifest parsing, sha256 verification, and refusal of names that leave the pack."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from service.packs.conventions import ARCFACE_NORMALIZATION, ARCFACE_TEMPLATE_112, ARCFACE_TEMPLATE_DERIVATION
from service.packs.files import PackError, write_manifest
from service.packs.loader import load_pack, resolve_pack_dir
from service.packs.manifest import (
    MANIFEST_FILE,
    Calibration,
    DetectorSpec,
    EmbedderSpec,
    OperatingPoint,
    PackManifest,
    Provenance,
    RetinaFaceDecoder,
)

PROVENANCE = Provenance(source="test bytes", license="CC0")


def _manifest(
    files: dict[str, str], *, detector: str = "det.onnx", embedder: str = "emb.onnx"
) -> PackManifest:
    return PackManifest(
        id="test-pack",
        detector=DetectorSpec(
            file=detector,
            input_name="input",
            normalization=ARCFACE_NORMALIZATION,
            decoder=RetinaFaceDecoder(),
            provenance=PROVENANCE,
        ),
        embedder=EmbedderSpec(
            file=embedder,
            input_name="input",
            output_name="embedding",
            input_size=(112, 112),
            normalization=ARCFACE_NORMALIZATION,
            template=ARCFACE_TEMPLATE_112,
            template_derivation=ARCFACE_TEMPLATE_DERIVATION,
            embedding_size=8,
            provenance=PROVENANCE,
        ),
        calibration=Calibration(operating_points={"default": OperatingPoint(threshold=0.4)}),
        files=files,
    )


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    """A pack whose files are arbitrary bytes: the loader checks names and hashes, not ONNX."""
    pack_dir = tmp_path / "pack"
    pack_dir.mkdir()
    files = {}
    for name, payload in (("det.onnx", b"detector bytes"), ("emb.onnx", b"embedder bytes")):
        (pack_dir / name).write_bytes(payload)
        files[name] = hashlib.sha256(payload).hexdigest()
    write_manifest(pack_dir, _manifest(files))
    return pack_dir


def _edit_manifest(pack_dir: Path, edit: dict) -> None:
    path = pack_dir / MANIFEST_FILE
    data = json.loads(path.read_text())
    for dotted, value in edit.items():
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
    path.write_text(json.dumps(data))


def test_valid_pack_loads_with_resolved_paths(pack: Path) -> None:
    loaded = load_pack(pack)
    assert loaded.manifest.id == "test-pack"
    assert loaded.detector_path.read_bytes() == b"detector bytes"
    assert loaded.embedder_path.read_bytes() == b"embedder bytes"
    assert loaded.dir == pack.resolve()


def test_manifest_write_leaves_no_temp_files(pack: Path) -> None:
    assert sorted(p.name for p in pack.iterdir()) == ["det.onnx", "emb.onnx", MANIFEST_FILE]


def test_missing_folder_and_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="does not exist"):
        load_pack(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackError, match=f"no {MANIFEST_FILE}"):
        load_pack(tmp_path / "empty")


def test_bad_json_is_reported_with_position(pack: Path) -> None:
    (pack / MANIFEST_FILE).write_text('{"id": "x",')
    with pytest.raises(PackError, match=r"not valid JSON.*line 1"):
        load_pack(pack)


def test_schema_errors_name_the_field_path(pack: Path) -> None:
    _edit_manifest(pack, {"embedder.embedding_size": 0, "detector.normalization.color_order": "CMYK"})
    with pytest.raises(PackError) as info:
        load_pack(pack)
    message = str(info.value)
    assert "embedder.embedding_size" in message
    assert "detector.normalization.color_order" in message


def test_sha256_mismatch_names_the_file(pack: Path) -> None:
    (pack / "emb.onnx").write_bytes(b"embedder bytes, tampered")
    with pytest.raises(PackError, match=r"sha256 mismatch for 'emb.onnx'") as info:
        load_pack(pack)
    assert "det.onnx" not in str(info.value)
    # Without verification the same pack loads (the service may skip hashing on a trusted volume).
    assert load_pack(pack, verify=False).embedder_path.name == "emb.onnx"


def test_listed_file_missing(pack: Path) -> None:
    (pack / "det.onnx").unlink()
    with pytest.raises(PackError, match=r"'det.onnx' listed in the manifest is missing"):
        load_pack(pack)


def test_file_names_escaping_the_pack_are_refused(pack: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"detector bytes")
    digest = hashlib.sha256(b"detector bytes").hexdigest()
    _edit_manifest(pack, {"files": {"../outside.onnx": digest, "emb.onnx": "0" * 64}})
    _edit_manifest(pack, {"detector.file": "../outside.onnx"})
    with pytest.raises(PackError, match="escapes the pack folder"):
        load_pack(pack)


def test_symlink_leaving_the_pack_is_refused(pack: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"detector bytes")  # same bytes: only the location is wrong
    (pack / "det.onnx").unlink()
    (pack / "det.onnx").symlink_to(outside)
    with pytest.raises(PackError, match="resolves outside the pack folder"):
        load_pack(pack)


def test_symlink_inside_the_pack_is_fine(pack: Path) -> None:
    (pack / "models").mkdir()
    (pack / "emb.onnx").rename(pack / "models" / "emb.onnx")
    (pack / "emb.onnx").symlink_to(pack / "models" / "emb.onnx")
    assert load_pack(pack).embedder_path.read_bytes() == b"embedder bytes"


@pytest.mark.parametrize("name", ["default", "buffalo_l", "my-pack.v2"])
def test_resolve_pack_dir_accepts_plain_names(tmp_path: Path, name: str) -> None:
    assert resolve_pack_dir(tmp_path, name) == tmp_path / name


@pytest.mark.parametrize("name", ["", "..", ".", "../etc", "a/b", "/abs", ".hidden", "a\\b", "x" * 65])
def test_resolve_pack_dir_rejects_traversal(tmp_path: Path, name: str) -> None:
    with pytest.raises(PackError, match="invalid pack name"):
        resolve_pack_dir(tmp_path, name)


# ------------------------------------------------------- a FACE_PACK with no files: what to do, pasteable


def _pasted_command(message: str) -> list[str]:
    """The one backquoted command of a hint, split as a shell would."""
    import re
    import shlex

    (command,) = re.findall(r"`([^`]+)`", message)
    return shlex.split(command)


@pytest.mark.parametrize("name", ["default", "dlib", "fast", "ensemble"])
@pytest.mark.parametrize("exists", [False, True], ids=["no-folder", "empty-folder"])
def test_missing_built_in_pack_names_the_command_that_builds_it_there(
    tmp_path: Path, name: str, exists: bool
) -> None:
    from export.cli import _parser
    from service.packs.loader import BUILT_IN_PACKS

    pack_dir = tmp_path / "models" / name
    if exists:
        pack_dir.mkdir(parents=True)
    with pytest.raises(PackError) as raised:
        load_pack(pack_dir)
    argv = _pasted_command(str(raised.value))
    program = Path(argv[0])
    assert program.name == "face-export"
    # Pasted in this shell it runs: on PATH, or the path of this environment's script.
    assert program.is_file() or __import__("shutil").which(argv[0]) is not None
    args = _parser().parse_args(argv[1:])
    assert args.command == BUILT_IN_PACKS[name]
    assert args.out == pack_dir


@pytest.mark.parametrize("layout_name", ["buffalo_l", "antelopev2"])
def test_missing_insightface_pack_says_what_to_place_where(tmp_path: Path, layout_name: str) -> None:
    from service.packs.insightface import INSIGHTFACE_PACKS
    from tests.packs.test_insightface_packs import arcface_like_model, scrfd_like_model

    layout = INSIGHTFACE_PACKS[layout_name]
    pack_dir = tmp_path / layout_name
    for attempt in ("no-folder", "empty-folder"):
        with pytest.raises(PackError) as raised:
            load_pack(pack_dir)
        message = str(raised.value)
        assert "build the default pack" not in message, attempt
        assert str(pack_dir / layout.detector_file) in message
        assert str(pack_dir / layout.embedder_file) in message
        assert f"{layout_name}.zip" in message
        pack_dir.mkdir(exist_ok=True)
    # Doing what it says is enough: the pack loads.
    scrfd_like_model(pack_dir / layout.detector_file, 0)
    arcface_like_model(pack_dir / layout.embedder_file, 0)
    assert load_pack(pack_dir).manifest.embedder.file == layout.embedder_file


@pytest.mark.parametrize("name", ["buffalo_s", "my-pack", "Default", "r50.v2"])
def test_missing_unknown_pack_lists_what_the_models_dir_holds(tmp_path: Path, name: str) -> None:
    from export.cli import _parser

    models = tmp_path / "models"
    (models / "dlib").mkdir(parents=True)
    (models / ".tensorrt-cache").mkdir()
    with pytest.raises(PackError) as raised:
        load_pack(models / name)
    message = str(raised.value)
    assert f"FACE_MODELS_DIR ({models}), which holds dlib;" in message
    args = _parser().parse_args(_pasted_command(message)[1:])
    assert (args.command, args.out) == ("default-pack", models / "default")


def test_hint_carries_non_default_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex

    from service.command_hints import command_hint

    spaced = tmp_path / "data dir"
    hint = command_hint("face-service", "keys", "create", data_dir=spaced)
    words = shlex.split(hint)
    assert words[0] == f"FACE_DATA_DIR={spaced}"
    assert Path(words[1]).name == "face-service"
    assert words[2:] == ["keys", "create"]
    from service.settings import default_data_dir

    assert not command_hint("face-service", data_dir=default_data_dir()).startswith("FACE_")
