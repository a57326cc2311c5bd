"""``face-eval``: measured accuracy of a pack on your images, and thresholds calibrated on them.

    face-eval pairs      --pairs pairs.txt --images DIR [--format lfw|csv] [--labels labels.csv]
                         [--scores scores.csv] [--json]
    face-eval identify   --images DIR --gallery-per-identity K [--non-mated single-image|FILE]
                         [--impostors N] [--fpirs 1e-1 1e-2] [--seed S]
    face-eval calibrate  --pairs pairs.txt --images DIR --fars 1e-2 1e-3 1e-4 [--write PACK_DIR]
    face-eval make-pairs --images DIR --out pairs.txt [--folds 10] [--per-fold N] [--seed S]

Every image goes through the service's own FacePipeline (decode, detect, choose a face, align,
embed) with the same Settings (``FACE_*``), and identification through its Gallery and FaissIndex.
``--face``, ``--flip`` and ``--det-input-size`` override the face choice, flip TTA and detector size
for one run. With ``--json`` the last line of standard output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.evaluation.calibrate import (
    DEFAULT_CALIBRATION_FARS,
    calibrate,
    calibration_file,
    write_calibration,
)
from service.evaluation.embed_files import (
    EmbeddingRun,
    EmbedOptions,
    FileEmbedder,
    build_pipeline,
    stderr_progress,
)
from service.evaluation.embedding_cache import EmbeddingCache
from service.evaluation.identify import (
    DEFAULT_FPIRS,
    SINGLE_IMAGE,
    RunFacts,
    evaluate_identification,
    read_identity_list,
    single_image_identities,
    split_identities,
)
from service.evaluation.pairs import (
    LFW_PATTERN,
    PairSet,
    PairsFormatError,
    build_lfw_folds,
    format_lfw_pairs,
    identity_folders,
    path_pattern,
    read_csv_pairs,
    read_labels_csv,
    read_lfw_pairs,
)
from service.evaluation.verification import (
    NoFacePolicy,
    PairsEvaluation,
    named_point_results,
    report_for,
    score_pairs,
    write_pair_scores,
)
from service.packs.files import PackError, sha256_file
from service.packs.loader import LoadedPack, load_pack
from service.pipeline.decode import ImageDecodeError
from service.settings import FacePolicy, Settings

# Errors that mean "bad input": one line on stderr and exit status 2, no traceback.
_USER_ERRORS: tuple[type[Exception], ...] = (
    PairsFormatError,
    PackError,
    FileNotFoundError,
    ImageDecodeError,
    ValueError,
)


def default_cache_dir(settings: Settings) -> Path:
    """Beside the model packs: both are caches that can be deleted at any time."""
    return settings.models_dir.parent / "eval-cache"


# ------------------------------------------------------------------------------------------- context


@dataclass(frozen=True)
class EvalContext:
    """What every subcommand needs: settings, the pack, and an embedder over files."""

    settings: Settings
    pack: LoadedPack
    embedder: FileEmbedder
    quiet: bool

    def embed(self, paths: Sequence[Path]) -> EmbeddingRun:
        missing = [path for path in dict.fromkeys(paths) if not path.is_file()]
        if missing:
            shown = ", ".join(str(p) for p in missing[:5])
            raise FileNotFoundError(f"{len(missing)} image(s) not found, e.g. {shown}")
        progress = None if self.quiet else stderr_progress("embedding images")
        return self.embedder.embed_files(paths, progress)


def _settings(args: argparse.Namespace) -> Settings:
    """``FACE_*`` settings, with this run's ``--det-input-size`` over ``FACE_DET_INPUT_SIZE``."""
    settings = Settings()
    if args.det_input_size is not None:
        settings = settings.model_copy(update={"det_input_size": args.det_input_size})
    return settings


def _flip(args: argparse.Namespace) -> bool | None:
    return None if args.flip is None else args.flip == "on"


def _context(args: argparse.Namespace, pack_dir: Path | None = None) -> EvalContext:
    settings = _settings(args)
    pack = load_pack(pack_dir or args.pack or settings.pack_dir)
    cache = None if args.no_cache else EmbeddingCache(args.cache or default_cache_dir(settings))
    flip = _flip(args)
    face = None if args.face is None else FacePolicy(args.face)
    options = EmbedOptions.from_settings(settings, aligned=args.aligned, face_policy=face, flip=flip)

    def open_pipeline() -> Any:
        return build_pipeline(pack, settings, flip=flip)  # onnxruntime sessions: only on a cache miss

    return EvalContext(settings, pack, FileEmbedder(pack, open_pipeline, options, cache), args.quiet)


def _resolved_flip(context: EvalContext) -> bool:
    flip = context.embedder.options.flip
    return context.pack.manifest.embedder.flip_augmentation if flip is None else flip


def _policy(args: argparse.Namespace) -> NoFacePolicy:
    return NoFacePolicy.EXCLUDE if args.exclude_no_face else NoFacePolicy.FAIL


def _read_pairs(args: argparse.Namespace) -> PairSet:
    pairs_file: Path = args.pairs
    images: Path = args.images
    if not pairs_file.is_file():
        raise FileNotFoundError(f"pairs file {pairs_file} does not exist")
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {images} does not exist")
    file_format = args.format or ("csv" if pairs_file.suffix.lower() == ".csv" else "lfw")
    if file_format == "csv":
        labels = read_labels_csv(args.labels) if args.labels else None
        return read_csv_pairs(pairs_file, images, labels=labels)
    return read_lfw_pairs(pairs_file, path_pattern(images, args.pattern, ext=args.ext))


def _emit(text: str, payload: Mapping[str, Any], as_json: bool) -> None:
    print(text)
    if as_json:
        print(json.dumps(payload, sort_keys=True, allow_nan=False))


# ---------------------------------------------------------------------------------------- subcommands


def _evaluate_pairs(args: argparse.Namespace, context: EvalContext) -> tuple[PairSet, PairsEvaluation]:
    pairs = _read_pairs(args)
    run = context.embed(pairs.images)
    if args.scores:
        write_pair_scores(args.scores, pairs, run.results)
    policy = _policy(args)
    scored = score_pairs(pairs, run.results, policy)
    report = report_for(scored)
    evaluation = PairsEvaluation(
        source=pairs.source,
        pack_id=context.pack.manifest.id,
        report=report,
        images=len(run.results),
        no_face_images=len(run.no_face),
        no_face_files=tuple(str(path) for path in run.no_face),
        policy=policy,
        pairs_with_no_face=scored.pairs_with_no_face,
        pairs_excluded=scored.excluded,
        seconds_per_image=run.seconds_per_image,
        cache_hits=run.cache_hits,
        computed=run.computed,
        named_points=named_point_results(scored, context.pack.manifest.calibration.operating_points),
        face_policy=context.embedder.options.face_policy.value,
        flip=_resolved_flip(context),
    )
    if args.plot:
        from service.evaluation.plots import plot_roc_det

        plot_roc_det(
            scored.scores, scored.labels, args.plot, title=f"{Path(pairs.source).name}: {report.pairs} pairs"
        )
    return pairs, evaluation


def run_pairs(args: argparse.Namespace) -> int:
    context = _context(args)
    _, evaluation = _evaluate_pairs(args, context)
    text = evaluation.to_text()
    if args.plot:
        text += f"\nplot:       {args.plot}"
    if args.scores:
        text += f"\nscores:     {args.scores} (one row per pair)"
    _emit(text, evaluation.to_json() | {"scores_file": _str_or_none(args.scores)}, args.json)
    return 0


def _str_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _non_mated(value: str | None, folders: Mapping[str, Sequence[Path]]) -> list[str]:
    """The identities ``--non-mated`` names: one-photo people, or those listed in a file."""
    if value is None:
        return []
    if value == SINGLE_IMAGE:
        names = single_image_identities(folders)
        if not names:
            raise ValueError("--non-mated single-image: no identity folder holds exactly one image")
        return names
    return read_identity_list(Path(value))


def run_identify(args: argparse.Namespace) -> int:
    context = _context(args)
    folders = identity_folders(args.images)
    split = split_identities(
        folders,
        args.gallery_per_identity,
        impostors=args.impostors,
        seed=args.seed,
        non_mated=_non_mated(args.non_mated, folders),
    )
    run = context.embed(split.images)
    facts = RunFacts(
        pack_id=context.pack.manifest.id,
        embedding_size=context.pack.manifest.embedder.embedding_size,
        seconds_per_image=run.seconds_per_image,
        cache_hits=run.cache_hits,
        computed=run.computed,
    )
    evaluation = evaluate_identification(
        split,
        run.results,
        facts,
        context.settings,
        policy=_policy(args),
        fpirs=args.fpirs,
        default_threshold=context.pack.manifest.calibration.operating_points["default"].threshold,
    )
    payload = evaluation.to_json() | {
        "images_dir": str(args.images),
        "gallery_per_identity": args.gallery_per_identity,
        "impostor_identities": list(split.impostor_identities),
        "non_mated": args.non_mated,
        "seed": args.seed,
        "face_policy": context.embedder.options.face_policy.value,
        "flip": _resolved_flip(context),
    }
    flip = "on" if payload["flip"] else "off"
    heading = f"images:     {args.images}\nface:       {payload['face_policy']} policy, flip {flip}\n"
    _emit(heading + evaluation.to_text(), payload, args.json)
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    context = _context(args, pack_dir=args.pack or args.write)
    pairs = _read_pairs(args)
    run = context.embed(pairs.images)
    if args.scores:
        write_pair_scores(args.scores, pairs, run.results)
    policy = _policy(args)
    scored = score_pairs(pairs, run.results, policy)
    result = calibrate(scored.scores, scored.labels, args.fars, probability=args.probability)
    lines = [f"pairs:      {pairs.source}", f"pack:       {context.pack.manifest.id}", result.to_text()]
    payload: dict[str, Any] = result.to_json() | {
        "pack_id": context.pack.manifest.id,
        "written": None,
        "scores_file": _str_or_none(args.scores),
    }
    if args.scores:
        lines.append(f"scores:     {args.scores} (one row per pair)")
    if args.write:
        source = {
            "pairs_file": str(args.pairs.resolve()),
            "pairs_sha256": sha256_file(args.pairs),
            "images_dir": str(args.images.resolve()),
            "pairs": result.pairs,
            "genuine_pairs": result.genuine_pairs,
            "impostor_pairs": result.impostor_pairs,
            "no_face_images": len(run.no_face),
            "no_face_policy": policy.value,
            "aligned_input": args.aligned,
            "face_policy": context.embedder.options.face_policy.value,
            "flip": _resolved_flip(context),
            "det_input_size": context.settings.det_input_size,
        }
        path = write_calibration(args.write, calibration_file(context.pack.manifest.id, result, source))
        payload["written"] = str(path)
        lines.append(
            f"wrote {path}\nthe service offers these as named thresholds (threshold=far=1e-3 in a request, "
            "or FACE_THRESHOLD=far=1e-3 for its default); GET /v1/info lists them"
        )
    _emit("\n".join(lines), payload, args.json)
    return 0


def run_make_pairs(args: argparse.Namespace) -> int:
    folders = identity_folders(args.images)
    counts = {name: len(files) for name, files in folders.items()}
    folds = build_lfw_folds(counts, n_folds=args.folds, per_fold=args.per_fold, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(format_lfw_pairs(folds), encoding="utf-8")
    per_fold = len(folds[0].same)
    print(
        f"wrote {args.out}: {len(folds)} folds × ({per_fold} same + {per_fold} different) pairs over "
        f"{len(counts)} identities; image numbers are positions in each folder's sorted file list, so "
        f"evaluate with: face-eval pairs --pairs {args.out} --images {args.images} --pattern sorted"
    )
    return 0


# ------------------------------------------------------------------------------------------- parser


def _far(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"a false-accept rate is in (0, 1), got {text}")
    return value


def _det_input_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    # The bounds of Settings.det_input_size (FACE_DET_INPUT_SIZE).
    if not 64 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"the detector input size is 64 to 4096 pixels, got {value}")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pack", type=Path, help="pack folder (default: FACE_MODELS_DIR/FACE_PACK)")
    parser.add_argument("--cache", type=Path, help="embedding cache folder (default: beside the packs)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument(
        "--aligned", action="store_true", help="images already are the pack's aligned chips: skip detection"
    )
    parser.add_argument(
        "--face",
        choices=[policy.value for policy in FacePolicy],
        help="which face of an image is embedded (default: FACE_FACE_POLICY, as the service does)",
    )
    parser.add_argument(
        "--flip", choices=("on", "off"), help="flip test-time augmentation (default: as the pack's manifest)"
    )
    parser.add_argument(
        "--det-input-size",
        type=_det_input_size,
        help="longest image side fed to the detector (default: FACE_DET_INPUT_SIZE)",
    )
    parser.add_argument(
        "--exclude-no-face",
        action="store_true",
        help="leave out what involves an image without a face (default: count it as a failed match)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _add_pairs_input(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=Path, required=True, help="LFW pairs.txt or a CSV of pairs")
    parser.add_argument("--images", type=Path, required=True, help="the image folder the pairs refer to")
    parser.add_argument("--format", choices=("lfw", "csv"), help="default: csv for *.csv, else lfw")
    parser.add_argument(
        "--labels", type=Path, help="labels.csv (identity,file) resolving bare CSV file names"
    )
    parser.add_argument(
        "--pattern",
        default=LFW_PATTERN,
        help="LFW image file pattern with {name} and {index}, or 'sorted' (index-th file of the folder); "
        f"default {LFW_PATTERN}",
    )
    parser.add_argument("--ext", help="file extension replacing .jpg in the default pattern (e.g. png)")
    parser.add_argument(
        "--scores", type=Path, help="write one CSV row per pair: files, label, score, boxes, face counts"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="face-eval", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    commands = parser.add_subparsers(dest="command", required=True)

    pairs = commands.add_parser("pairs", help="verification accuracy on a pairs protocol")
    _add_pairs_input(pairs)
    _add_common(pairs)
    pairs.add_argument("--plot", type=Path, help="write ROC and DET curves to this PNG")
    pairs.set_defaults(handler=run_pairs)

    identify = commands.add_parser("identify", help="rank-k and open-set identification accuracy")
    identify.add_argument("--images", type=Path, required=True, help="one sub-folder of images per identity")
    identify.add_argument(
        "--gallery-per-identity", type=int, required=True, help="images enrolled per identity"
    )
    identify.add_argument(
        "--non-mated",
        metavar="single-image|FILE",
        help="non-mated probes: people with exactly one photo (single-image), or the identity folders "
        "listed in FILE (one name a line); never enrolled",
    )
    identify.add_argument(
        "--impostors", type=int, default=0, help="more identities, drawn at random, left out as non-mated"
    )
    identify.add_argument(
        "--fpirs",
        type=_far,
        nargs="+",
        default=list(DEFAULT_FPIRS),
        help="false-positive identification rates to report TPIR at (default: 1e-1 1e-2)",
    )
    identify.add_argument("--seed", type=int, default=0)
    _add_common(identify)
    identify.set_defaults(handler=run_identify)

    cal = commands.add_parser("calibrate", help="thresholds for target false-accept rates")
    _add_pairs_input(cal)
    _add_common(cal)
    cal.add_argument("--fars", type=_far, nargs="+", default=list(DEFAULT_CALIBRATION_FARS))
    cal.add_argument("--write", type=Path, help="pack folder to write calibration.json into")
    cal.add_argument("--probability", action="store_true", help="also fit a match probability (logistic)")
    cal.set_defaults(handler=run_calibrate)

    make = commands.add_parser("make-pairs", help="write LFW-format pairs.txt for an identity-per-folder set")
    make.add_argument("--images", type=Path, required=True)
    make.add_argument("--out", type=Path, required=True)
    make.add_argument("--folds", type=int, default=10)
    make.add_argument("--per-fold", type=int, help="same (and different) pairs per fold; default: max, ≤ 300")
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(handler=run_make_pairs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except _USER_ERRORS as exc:
        print(f"face-eval {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
