"""``face-eval``: measured accuracy of a pack on your images, and thresholds calibrated on them.

    face-eval pairs      --pairs pairs.txt --images DIR [--format lfw|csv] [--labels labels.csv] [--json]
    face-eval identify   --images DIR --gallery-per-identity K [--impostors N] [--seed S]
    face-eval calibrate  --pairs pairs.txt --images DIR --fars 1e-2 1e-3 1e-4 [--write PACK_DIR]
    face-eval make-pairs --images DIR --out pairs.txt [--folds 10] [--per-fold N] [--seed S]

Every image goes through the service's own FacePipeline (decode, detect, align, embed) with the
same Settings (``FACE_*``), and identification through its Gallery and FaceIndex. With ``--json``
the last line of standard output is one JSON object.
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
from service.evaluation.embed_files import EmbeddingRun, EmbedOptions, FileEmbedder, stderr_progress
from service.evaluation.embedding_cache import EmbeddingCache, file_sha256
from service.evaluation.identify import RunFacts, evaluate_identification, split_identities
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
from service.evaluation.verification import NoFacePolicy, PairsEvaluation, report_for, score_pairs
from service.packs.loader import LoadedPack, PackError, load_pack
from service.pipeline.decode import ImageDecodeError
from service.settings import Settings

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


def _context(args: argparse.Namespace, pack_dir: Path | None = None) -> EvalContext:
    settings = Settings()
    pack = load_pack(pack_dir or args.pack or settings.pack_dir)
    cache = None if args.no_cache else EmbeddingCache(args.cache or default_cache_dir(settings))

    def open_pipeline() -> Any:
        from service.pipeline.face_pipeline import FacePipeline  # onnxruntime sessions: only on a miss

        return FacePipeline.from_pack(pack, settings)

    options = EmbedOptions.from_settings(settings, aligned=args.aligned)
    return EvalContext(
        settings, pack, FileEmbedder(pack.manifest.id, open_pipeline, options, cache), args.quiet
    )


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
    _emit(text, evaluation.to_json(), args.json)
    return 0


def run_identify(args: argparse.Namespace) -> int:
    context = _context(args)
    folders = identity_folders(args.images)
    split = split_identities(folders, args.gallery_per_identity, impostors=args.impostors, seed=args.seed)
    run = context.embed(split.images)
    facts = RunFacts(
        pack_id=context.pack.manifest.id,
        embedding_size=context.pack.manifest.embedder.embedding_size,
        seconds_per_image=run.seconds_per_image,
        cache_hits=run.cache_hits,
        computed=run.computed,
    )
    evaluation = evaluate_identification(split, run.results, facts, context.settings, policy=_policy(args))
    payload = evaluation.to_json() | {
        "images_dir": str(args.images),
        "gallery_per_identity": args.gallery_per_identity,
        "impostor_identities": list(split.impostor_identities),
        "seed": args.seed,
    }
    _emit(f"images:     {args.images}\n" + evaluation.to_text(), payload, args.json)
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    context = _context(args, pack_dir=args.pack or args.write)
    pairs = _read_pairs(args)
    run = context.embed(pairs.images)
    policy = _policy(args)
    scored = score_pairs(pairs, run.results, policy)
    result = calibrate(scored.scores, scored.labels, args.fars, probability=args.probability)
    lines = [f"pairs:      {pairs.source}", f"pack:       {context.pack.manifest.id}", result.to_text()]
    payload: dict[str, Any] = result.to_json() | {"pack_id": context.pack.manifest.id, "written": None}
    if args.write:
        source = {
            "pairs_file": str(args.pairs.resolve()),
            "pairs_sha256": file_sha256(args.pairs),
            "images_dir": str(args.images.resolve()),
            "pairs": result.pairs,
            "genuine_pairs": result.genuine_pairs,
            "impostor_pairs": result.impostor_pairs,
            "no_face_images": len(run.no_face),
            "no_face_policy": policy.value,
            "aligned_input": args.aligned,
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


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pack", type=Path, help="pack folder (default: FACE_MODELS_DIR/FACE_PACK)")
    parser.add_argument("--cache", type=Path, help="embedding cache folder (default: beside the packs)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument(
        "--aligned", action="store_true", help="images already are the pack's aligned chips: skip detection"
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
    identify.add_argument("--impostors", type=int, default=0, help="identities left out as non-mated probes")
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
