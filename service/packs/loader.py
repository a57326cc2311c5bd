"""Load a model pack: parse ``manifest.json``, resolve its files safely, verify every sha256.

No torch here: the service imports this module. A folder without a manifest that holds a known
insightface pack gets its manifest written first (see ``service/packs/insightface.py``).

A ``calibration.json`` next to the manifest (written by ``face-eval calibrate``) adds operating points
measured on the user's data to the manifest's calibration; the pack's own ``default`` stays as is.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from service.packs.files import PackError, sha256_file, write_manifest
from service.packs.insightface import INSIGHTFACE_PACKS, insightface_manifest, match_insightface_layout
from service.packs.manifest import MANIFEST_FILE, Calibration, OperatingPoint, PackManifest

logger = logging.getLogger(__name__)

# Same rule as Settings.pack: a single path component that cannot be "." or "..".
PACK_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CALIBRATION_FILE = "calibration.json"
DEFAULT_OPERATING_POINT = "default"


@dataclass(frozen=True)
class LoadedPack:
    dir: Path  # resolved pack folder
    manifest: PackManifest
    detector_path: Path
    embedder_path: Path
    # Every embedder's file in manifest.embedders order (an ensemble has several); () = (embedder_path,)
    member_paths: tuple[Path, ...] = ()
    calibration_path: Path | None = None  # the calibration.json merged into manifest.calibration


class CalibrationFile(BaseModel):
    """``calibration.json``: operating points measured for one pack, and the data they came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    pack_id: str  # the pack it was measured with; a file for another pack is ignored
    operating_points: dict[str, OperatingPoint]
    # Optional calibrated match probability P(same | s) = 1 / (1 + exp(-(a·s + b))).
    probability: dict[str, float] | None = None
    probability_note: str = ""
    source: dict[str, Any] = {}  # pairs file, image folder, pair counts, no-face policy
    created_at: str = ""
    created_by: str = ""


def resolve_pack_dir(models_dir: Path, name: str) -> Path:
    """``models_dir / name`` for a pack name that is one plain path component (no traversal)."""
    if not PACK_NAME_PATTERN.fullmatch(name):
        raise PackError(
            f"invalid pack name {name!r}: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return models_dir / name


# FACE_PACK names of the packs `face-export` builds, and the subcommand that builds each.
BUILT_IN_PACKS: Mapping[str, str] = MappingProxyType(
    {
        "default": "default-pack",
        "fp32": "fp32-pack",
        "dlib": "dlib-pack",
        "fast": "fast-pack",
        "ensemble": "ensemble-pack",
    }
)


def how_to_provide_pack(pack_dir: Path) -> str:
    """What to run, or what to place where, so that ``pack_dir`` holds the pack its name stands for."""
    from service.command_hints import command_hint

    name = pack_dir.name
    if name in BUILT_IN_PACKS:
        command = command_hint("face-export", BUILT_IN_PACKS[name], "--out", str(pack_dir))
        return f"build the {name} pack with `{command}`"
    if name in INSIGHTFACE_PACKS:
        layout = INSIGHTFACE_PACKS[name]
        command = command_hint("face-export", "insightface-pack", str(pack_dir))
        return (
            f"{name} is an insightface pack, never built here (non-commercial weights): unzip "
            f"insightface's {name}.zip so that {pack_dir / layout.detector_file} and "
            f"{pack_dir / layout.embedder_file} exist (its other files are ignored); the manifest is "
            f"written at the next start, or now by `{command}`"
        )
    models_dir = pack_dir.parent
    present = (
        sorted(p.name for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if models_dir.is_dir()
        else []
    )
    default = command_hint("face-export", "default-pack", "--out", str(models_dir / "default"))
    return (
        f"FACE_PACK names a folder under FACE_MODELS_DIR ({models_dir}), which holds "
        f"{', '.join(present) if present else 'no pack folders'}; build the default pack with `{default}`, "
        f"or one of {', '.join(sorted(BUILT_IN_PACKS))} with its face-export subcommand (docs/export.md)"
    )


def folders_holding_pack(models_dir: Path, pack_id: str) -> list[str]:
    """Names of the folders under ``models_dir`` whose manifest has id ``pack_id`` (FACE_PACK values)."""
    found = []
    for folder in sorted(models_dir.iterdir()) if models_dir.is_dir() else []:
        try:
            if PACK_NAME_PATTERN.fullmatch(folder.name) and read_manifest(folder).id == pack_id:
                found.append(folder.name)
        except (PackError, OSError):  # not a pack, or unreadable: it cannot be the one asked for
            continue
    return found


def pack_mismatch_advice(*, data_dir: Path, models_dir: Path, running_pack: str, gallery_pack_id: str) -> str:
    """Pasteable ways out of a gallery pinned to another pack: re-embed with this one, or serve that one."""
    from service.command_hints import command_hint

    reembed = command_hint(
        "face-service", "reembed", "--pack", running_pack, data_dir=data_dir, models_dir=models_dir
    )
    advice = f"stop the service and re-embed the gallery's stored crops with this pack: `{reembed}`"
    holders = folders_holding_pack(models_dir, gallery_pack_id)
    if holders:
        serve = command_hint("face-service", "serve", data_dir=data_dir, models_dir=models_dir)
        keep = f"FACE_PACK={holders[0]} {serve}"
        return f"{advice}; or keep using the gallery's pack (folder {holders[0]}): `{keep}`"
    return (
        f"{advice}; or keep using the gallery's pack: no folder under {models_dir} holds "
        f"{gallery_pack_id!r} now (restore it there, then set FACE_PACK to that folder's name)"
    )


def pack_file_path(pack_dir: Path, name: str) -> Path:
    """The path of a file a manifest names, refusing names or symlinks that leave the pack folder."""
    pure = PurePosixPath(name)
    if not name or "\\" in name or pure.is_absolute() or ".." in pure.parts:
        raise PackError(f"pack file name escapes the pack folder: {name!r}")
    root = pack_dir.resolve()
    path = root / pure
    real = path.resolve()
    if not real.is_relative_to(root):
        raise PackError(f"pack file {name!r} resolves outside the pack folder (to {real})")
    if not real.is_file():
        raise PackError(f"pack file {name!r} listed in the manifest is missing from {root}")
    return path


def parse_manifest(text: str, *, origin: str = MANIFEST_FILE) -> PackManifest:
    """Parse and validate manifest JSON; errors name the offending field paths."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise PackError(f"{origin} is not valid JSON: {exc.msg} ({where})") from None
    try:
        return PackManifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise PackError(f"{origin} does not match the pack schema: {problems}") from None


def read_manifest(pack_dir: Path) -> PackManifest:
    path = pack_dir / MANIFEST_FILE
    if path.is_symlink() and not path.resolve().is_relative_to(pack_dir.resolve()):
        raise PackError(f"{path} is a symlink that leaves the pack folder")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PackError(f"no {MANIFEST_FILE} in {pack_dir}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PackError(f"cannot read {path}: {exc}") from None
    return parse_manifest(text, origin=str(path))


def verify_files(pack_dir: Path, manifest: PackManifest) -> None:
    """Check every listed file exists inside the pack and has its recorded sha256."""
    problems: list[str] = []
    for name, expected in sorted(manifest.files.items()):
        try:
            path = pack_file_path(pack_dir, name)
        except PackError as exc:
            problems.append(str(exc))
            continue
        actual = sha256_file(path)
        if actual != expected.lower():
            problems.append(
                f"sha256 mismatch for {name!r}: manifest says {expected[:16]}…, file has {actual[:16]}…"
            )
    if problems:
        raise PackError(f"pack {pack_dir} failed verification: " + "; ".join(problems))


def load_pack(pack_dir: Path, *, verify: bool = True) -> LoadedPack:
    """Load the pack in ``pack_dir``; with ``verify`` every file's sha256 is checked.

    Raises ``PackError`` with a message that names the problem (missing folder or manifest, bad
    JSON, schema errors with field paths, a sha256 mismatch naming the file, names escaping the pack).
    """
    if not pack_dir.is_dir():
        raise PackError(f"pack folder {pack_dir} does not exist; {how_to_provide_pack(pack_dir)}")
    if not (pack_dir / MANIFEST_FILE).exists():
        manifest = _manifest_for_unlabelled_pack(pack_dir)
    else:
        manifest = read_manifest(pack_dir)
    if verify:
        verify_files(pack_dir, manifest)
    calibration = read_calibration_file(pack_dir)
    calibration_path: Path | None = None
    if calibration is not None and calibration.pack_id != manifest.id:
        logger.warning(
            "ignoring %s: it was measured with pack %r, this pack is %r (re-run `face-eval calibrate`)",
            pack_dir / CALIBRATION_FILE,
            calibration.pack_id,
            manifest.id,
        )
    elif calibration is not None:
        manifest = manifest.model_copy(
            update={"calibration": merge_calibration(manifest.calibration, calibration)}
        )
        calibration_path = (pack_dir / CALIBRATION_FILE).resolve()
        logger.info(
            "pack %s: merged %s (operating points %s)",
            manifest.id,
            calibration_path,
            ", ".join(sorted(calibration.operating_points)),
        )
    embedder = manifest.embedder
    return LoadedPack(
        dir=pack_dir.resolve(),
        manifest=manifest,
        detector_path=pack_file_path(pack_dir, manifest.detector.file),
        embedder_path=pack_file_path(pack_dir, embedder.file),
        member_paths=tuple(pack_file_path(pack_dir, member.file) for member in manifest.embedders),
        calibration_path=calibration_path,
    )


def read_calibration_file(pack_dir: Path) -> CalibrationFile | None:
    """The pack's ``calibration.json``, or None when there is none (PackError when it is invalid)."""
    path = pack_dir / CALIBRATION_FILE
    if not path.exists():
        return None
    if not path.resolve().is_relative_to(pack_dir.resolve()):
        raise PackError(f"{path} is a symlink that leaves the pack folder")
    try:
        calibration = CalibrationFile.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise PackError(f"cannot read {path}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise PackError(f"{path} is not a valid calibration file: {problems}") from None
    if DEFAULT_OPERATING_POINT in calibration.operating_points:
        # The pack's own default stays; a calibrated point is chosen with FACE_THRESHOLD=far=1e-3.
        raise PackError(
            f"{path} redefines the pack's {DEFAULT_OPERATING_POINT!r} operating point; remove it and "
            "choose a calibrated point with FACE_THRESHOLD (e.g. FACE_THRESHOLD=far=1e-3)"
        )
    return calibration


def merge_calibration(pack: Calibration, measured: CalibrationFile) -> Calibration:
    """The pack's operating points plus the measured ones (a measured point replaces a same-named one)."""
    return Calibration(
        operating_points={**pack.operating_points, **measured.operating_points},
        probability=measured.probability if measured.probability is not None else pack.probability,
    )


def _manifest_for_unlabelled_pack(pack_dir: Path) -> PackManifest:
    layout = match_insightface_layout(pack_dir)
    if layout is None:
        raise PackError(
            f"no {MANIFEST_FILE} in {pack_dir} and its files match no known insightface pack; "
            + how_to_provide_pack(pack_dir)
        )
    manifest = insightface_manifest(pack_dir, layout)
    try:
        write_manifest(pack_dir, manifest)
        logger.info("wrote %s for insightface pack %r in %s", MANIFEST_FILE, layout.name, pack_dir)
    except OSError as exc:
        # A read-only mount still works: the manifest is kept in memory for this process.
        logger.warning(
            "insightface pack %r in %s: cannot write %s (%s); using it from memory",
            layout.name,
            pack_dir,
            MANIFEST_FILE,
            exc,
        )
    return manifest
