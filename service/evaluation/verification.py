"""Pairs → scores (with an explicit no-face policy) → the verification report of ``metrics``."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.evaluation.embedding_cache import Box, FileEmbedding
from service.evaluation.metrics import VerificationReport, negatives_needed, verification_report
from service.evaluation.pairs import PairSet
from service.packs.manifest import OperatingPoint

# Pairs that have an image without a face get the lowest cosine: rejected at every threshold above -1.
NO_FACE_SCORE = -1.0
BASE_FARS: tuple[float, ...] = (1e-1, 1e-2, 1e-3)
LOWEST_FAR = 1e-6
DEFAULT_FOLDS = 10


class NoFacePolicy(StrEnum):
    FAIL = "fail"  # the pair is scored NO_FACE_SCORE: a same-person pair becomes a false reject
    EXCLUDE = "exclude"  # the pair is left out of every number

    def describe(self) -> str:
        descriptions = {
            NoFacePolicy.FAIL: (
                f"pairs with an image without a face are kept and scored {NO_FACE_SCORE:g} "
                "(a non-match: a same-person pair counts as a false reject)"
            ),
            NoFacePolicy.EXCLUDE: "pairs with an image without a face are excluded from every number",
        }
        return descriptions[self]


def far_label(far: float) -> str:
    """``1e-3`` for powers of ten (the names of operating points), else the shortest decimal."""
    exponent = math.log10(far)
    if math.isclose(exponent, round(exponent), abs_tol=1e-9):
        return f"1e{round(exponent)}"
    return f"{far:g}"


def fars_for(impostor_pairs: int, base: Sequence[float] = BASE_FARS) -> tuple[float, ...]:
    """The base FARs, plus each lower power of ten that ``impostor_pairs`` can measure."""
    fars = list(base)
    far = min(base) / 10.0
    while far >= LOWEST_FAR * 0.999 and impostor_pairs >= math.ceil(1.0 / far - 1e-9):
        fars.append(far)
        far /= 10.0
    return tuple(fars)


@dataclass(frozen=True)
class ScoredPairs:
    scores: npt.NDArray[np.float64]
    labels: npt.NDArray[np.bool_]
    folds: npt.NDArray[np.int64] | None  # from the pairs file, renumbered 0..k-1; None: stratified
    pairs_with_no_face: int  # pairs that had an image without a face (scored or excluded per policy)
    excluded: int


def score_pairs(pairs: PairSet, results: Mapping[Path, FileEmbedding], policy: NoFacePolicy) -> ScoredPairs:
    """Cosine similarity of each pair's embeddings (unit vectors), with the no-face policy applied."""
    scores: list[float] = []
    labels: list[bool] = []
    folds: list[int] = []
    affected = 0
    for pair in pairs.pairs:
        score = pair_score(results[pair.first], results[pair.second])
        if score is None:
            affected += 1
            if policy is NoFacePolicy.EXCLUDE:
                continue
            score = NO_FACE_SCORE
        scores.append(score)
        labels.append(pair.same)
        folds.append(-1 if pair.fold is None else pair.fold)
    fold_array: npt.NDArray[np.int64] | None = None
    if pairs.n_folds is not None and folds:
        # Renumber so that a fold emptied by exclusions does not leave a gap.
        _, renumbered = np.unique(np.asarray(folds, dtype=np.int64), return_inverse=True)
        fold_array = renumbered.astype(np.int64)
    excluded = affected if policy is NoFacePolicy.EXCLUDE else 0
    return ScoredPairs(
        np.asarray(scores, dtype=np.float64),
        np.asarray(labels, dtype=np.bool_),
        fold_array,
        affected,
        excluded,
    )


def pair_score(first: FileEmbedding, second: FileEmbedding) -> float | None:
    """Cosine similarity of two files' embeddings (unit vectors); None when either has no face."""
    if first.embedding is None or second.embedding is None:
        return None
    return float(np.dot(first.embedding.astype(np.float64), second.embedding.astype(np.float64)))


SCORES_COLUMNS: tuple[str, ...] = (
    "file_a",
    "file_b",
    "label",
    "score",
    *(f"a_{c}" for c in ("x1", "y1", "x2", "y2", "faces")),
    *(f"b_{c}" for c in ("x1", "y1", "x2", "y2", "faces")),
)


def _face_columns(result: FileEmbedding) -> list[str]:
    box: Box | None = result.box if result.embedding is not None else None
    coordinates = ["", "", "", ""] if box is None else [f"{v:.1f}" for v in box]
    return [*coordinates, str(result.faces_in_image)]


def write_pair_scores(path: Path, pairs: PairSet, results: Mapping[Path, FileEmbedding]) -> int:
    """One CSV row per pair: files, label (1/0), score, each chosen face's box and face count.

    A pair with an image without a face has an empty score (and that image an empty box): what it
    counts as is the no-face policy's business, not the file's. Returns the rows written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(SCORES_COLUMNS)
        for pair in pairs.pairs:
            first, second = results[pair.first], results[pair.second]
            score = pair_score(first, second)
            writer.writerow(
                [
                    str(pair.first),
                    str(pair.second),
                    int(pair.same),
                    "" if score is None else f"{score:.6f}",
                    *_face_columns(first),
                    *_face_columns(second),
                ]
            )
    return len(pairs.pairs)


@dataclass(frozen=True)
class NamedPointResult:
    """TAR and FAR measured at one of the pack's named thresholds (``far=1e-3``, ``default``)."""

    name: str
    threshold: float
    target_far: float | None  # what the point was calibrated for, if the manifest says
    tar: float | None  # None without same-person pairs
    far: float | None  # None without different-person pairs
    impostor_pairs: int

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "target_far": self.target_far,
            "tar": self.tar,
            "far": self.far,
            "impostor_pairs": self.impostor_pairs,
        }

    def to_text(self) -> str:
        tar = "n/a" if self.tar is None else f"{100 * self.tar:.2f}%"
        far = "n/a" if self.far is None else f"{100 * self.far:.3f}%"
        target = "" if self.target_far is None else f"; calibrated for FAR {100 * self.target_far:.3g}%"
        return (
            f"{self.name + ':':<17} TAR {tar}, FAR {far} at threshold {self.threshold:.4f} "
            f"(over {self.impostor_pairs} different-person pairs{target})"
        )


def named_point_results(
    scored: ScoredPairs, points: Mapping[str, OperatingPoint]
) -> tuple[NamedPointResult, ...]:
    """TAR/FAR at each named threshold; a pair matches when its score is >= the threshold, as in
    ``/v1/verify``. Sorted by threshold, so the list reads from permissive to strict."""
    genuine = scored.scores[scored.labels]
    impostor = scored.scores[~scored.labels]
    results = [
        NamedPointResult(
            name=name,
            threshold=point.threshold,
            target_far=point.far,
            tar=float(np.mean(genuine >= point.threshold)) if genuine.size else None,
            far=float(np.mean(impostor >= point.threshold)) if impostor.size else None,
            impostor_pairs=int(impostor.size),
        )
        for name, point in points.items()
    ]
    return tuple(sorted(results, key=lambda r: (r.threshold, r.name)))


def report_for(scored: ScoredPairs, fars: Sequence[float] | None = None) -> VerificationReport:
    """The metrics report: the file's folds when it has them, else up to 10 stratified folds."""
    if scored.labels.size == 0:
        raise ValueError("no pairs left to evaluate")
    genuine = int(scored.labels.sum())
    impostor = int(scored.labels.size - genuine)
    chosen_fars = fars_for(impostor) if fars is None else tuple(fars)
    if scored.folds is not None:
        n_folds = int(scored.folds.max()) + 1
        return verification_report(
            scored.scores, scored.labels, n_folds=n_folds, fars=chosen_fars, folds=scored.folds
        )
    n_folds = max(2, min(DEFAULT_FOLDS, genuine, impostor))
    return verification_report(scored.scores, scored.labels, n_folds=n_folds, fars=chosen_fars)


@dataclass(frozen=True)
class PairsEvaluation:
    source: str
    pack_id: str
    report: VerificationReport
    images: int
    no_face_images: int
    no_face_files: tuple[str, ...]
    policy: NoFacePolicy
    pairs_with_no_face: int
    pairs_excluded: int
    seconds_per_image: float | None
    cache_hits: int
    computed: int
    named_points: tuple[NamedPointResult, ...] = ()  # at the pack's named thresholds
    face_policy: str = ""
    flip: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The machine-readable result (the last line of ``face-eval pairs --json``)."""
        report = self.report
        return {
            "source": self.source,
            "pack_id": self.pack_id,
            "accuracy": report.accuracy_mean,
            "accuracy_std": report.accuracy_std,
            "folds": report.n_folds,
            "auc": report.auc,
            "eer": report.eer,
            "threshold": report.best_threshold,
            "best_accuracy": report.best_accuracy,
            "tar_at_far": {far_label(p.target_far): p.tar for p in report.tar_at_far},
            "far_points": [
                {
                    "far": p.target_far,
                    "supported": p.supported,
                    "threshold": p.threshold,
                    "achieved_far": p.achieved_far,
                    "tar": p.tar,
                    "impostor_pairs": p.negatives,
                    "impostor_pairs_needed": p.negatives_needed,
                }
                for p in report.tar_at_far
            ],
            "pairs": report.pairs,
            "genuine_pairs": report.genuine_pairs,
            "impostor_pairs": report.impostor_pairs,
            "images": self.images,
            "no_face": self.no_face_images,
            "no_face_policy": self.policy.value,
            "pairs_with_no_face": self.pairs_with_no_face,
            "pairs_excluded": self.pairs_excluded,
            "seconds_per_image": self.seconds_per_image,
            "cache": {"hits": self.cache_hits, "computed": self.computed},
            "operating_points": {point.name: point.to_json() for point in self.named_points},
            "face_policy": self.face_policy,
            "flip": self.flip,
        }

    def to_text(self) -> str:
        report = self.report
        timing = "n/a" if self.seconds_per_image is None else f"{self.seconds_per_image * 1000:.1f} ms"
        lines = [
            f"pairs:      {self.source}",
            f"pack:       {self.pack_id}" + self._options_text(),
            f"images:     {self.images} ({self.no_face_images} without a detected face); "
            f"pipeline time per image {timing}; cache: {self.cache_hits} hits, {self.computed} computed",
            f"no face:    {self.pairs_with_no_face} pair(s) affected; {self.policy.describe()}",
            f"evaluated:  {report.pairs} pairs "
            f"({report.genuine_pairs} same, {report.impostor_pairs} different)",
            f"accuracy:   {100 * report.accuracy_mean:.2f}% ± {100 * report.accuracy_std:.2f}% "
            f"({report.n_folds}-fold, each fold's threshold chosen on the others)",
            f"ROC AUC:    {report.auc:.5f}    EER: {100 * report.eer:.2f}%",
            f"threshold:  {report.best_threshold:.4f} (best on all pairs: accuracy "
            f"{100 * report.best_accuracy:.2f}%)",
        ]
        for point in report.tar_at_far:
            label = f"TAR@FAR={far_label(point.target_far)}:"
            if point.supported and point.tar is not None:
                lines.append(
                    f"{label:<17} {100 * point.tar:.2f}% at threshold {point.threshold:.4f} "
                    f"(observed FAR {100 * (point.achieved_far or 0.0):.3f}%)"
                )
            else:
                lines.append(
                    f"{label:<17} not measurable: needs {point.negatives_needed} different-person pairs, "
                    f"this set has {point.negatives}"
                )
        # When every requested FAR was measurable, say what the next lower one would need.
        if (
            all(p.supported for p in report.tar_at_far)
            and min(p.target_far for p in report.tar_at_far) > LOWEST_FAR
        ):
            lower = min(p.target_far for p in report.tar_at_far) / 10.0
            lines.append(
                f"(FAR={far_label(lower)} needs {negatives_needed(lower)} different-person pairs; "
                f"this set has {report.impostor_pairs})"
            )
        if self.named_points:
            lines.append("the pack's named thresholds (a pair matches when its score is >= the threshold):")
            lines.extend(f"  {point.to_text()}" for point in self.named_points)
        if self.no_face_files:
            shown = ", ".join(self.no_face_files[:10])
            more = f" and {len(self.no_face_files) - 10} more" if len(self.no_face_files) > 10 else ""
            lines.append(f"no face in: {shown}{more}")
        return "\n".join(lines)

    def _options_text(self) -> str:
        if not self.face_policy:
            return ""
        flip = "" if self.flip is None else f", flip {'on' if self.flip else 'off'}"
        return f" (face: {self.face_policy}{flip})"
