"""Verification and identification metrics (numpy only; shared by face-train and face-eval).

Conventions used throughout:

* A *score* is a similarity: higher means "more likely the same person" (cosine similarity for
  unit-norm embeddings).
* A pair is *accepted* when ``score >= threshold``. Thresholds returned here are always values that
  reproduce the reported rates under that rule.
* ``labels`` are booleans (or 0/1): true for a genuine (same identity) pair, false for an impostor.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

DEFAULT_FARS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
DEFAULT_FPIRS: tuple[float, ...] = (1e-1, 1e-2)
_UNIT_NORM_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------- input checks


def _as_scores_labels(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, BoolArray]:
    score_array = np.asarray(scores, dtype=np.float64)
    label_array = np.asarray(labels)
    if score_array.ndim != 1 or label_array.ndim != 1:
        raise ValueError("scores and labels must be 1-D")
    if score_array.shape != label_array.shape:
        raise ValueError(f"scores ({score_array.size}) and labels ({label_array.size}) differ in length")
    if not np.all(np.isfinite(score_array)):
        raise ValueError("scores must be finite (no NaN or inf)")
    if label_array.dtype != np.bool_:
        if not np.all(np.isin(label_array, (0, 1))):
            raise ValueError("labels must be booleans or 0/1")
        label_array = label_array.astype(np.bool_)
    n_positive = int(label_array.sum())
    if n_positive == 0 or n_positive == label_array.size:
        raise ValueError("need at least one genuine and one impostor pair")
    return score_array, label_array


def negatives_needed(rate: float) -> int:
    """Impostor trials needed before a false-accept rate ``rate`` can be observed at all (⌈1/rate⌉)."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"a false-accept rate must be in (0, 1], got {rate}")
    # The epsilon keeps 1/1e-3 = 1000.0000000000001 from asking for 1001.
    return math.ceil(1.0 / rate - 1e-9)


# --------------------------------------------------------------------------------------------------- ROC


@dataclass(frozen=True)
class RocCurve:
    """Every distinct operating point; ``thresholds`` decrease, ``fpr``/``tpr`` increase.

    The first point (threshold ``+inf``) accepts nothing; the last accepts everything.
    """

    fpr: FloatArray
    tpr: FloatArray
    thresholds: FloatArray


def roc_curve(scores: npt.ArrayLike, labels: npt.ArrayLike) -> RocCurve:
    """ROC over all distinct thresholds (tied scores form one point, so ties are never split)."""
    score_array, label_array = _as_scores_labels(scores, labels)
    order = np.argsort(-score_array, kind="stable")
    sorted_scores = score_array[order]
    sorted_labels = label_array[order]
    # The last index of each run of equal scores: a threshold accepts the whole run or none of it.
    run_ends = np.flatnonzero(np.diff(sorted_scores) != 0.0)
    run_ends = np.append(run_ends, sorted_scores.size - 1)
    true_accepts = np.cumsum(sorted_labels)[run_ends]
    false_accepts = (run_ends + 1) - true_accepts
    n_positive = float(label_array.sum())
    n_negative = float(label_array.size - label_array.sum())
    return RocCurve(
        fpr=np.concatenate(([0.0], false_accepts / n_negative)),
        tpr=np.concatenate(([0.0], true_accepts / n_positive)),
        thresholds=np.concatenate(([np.inf], sorted_scores[run_ends])),
    )


def roc_auc(curve: RocCurve) -> float:
    """Area under the ROC: P(genuine score > impostor score) + ½·P(tie)."""
    return float(np.trapezoid(curve.tpr, curve.fpr))


def equal_error_rate(curve: RocCurve) -> float:
    """Where FPR = FNR on the ROC with straight segments between operating points."""
    fnr = 1.0 - curve.tpr
    gap = curve.fpr - fnr  # -1 at the first point, +1 at the last, non-decreasing in between
    crossing = int(np.argmax(gap >= 0.0))
    if crossing == 0 or gap[crossing] == 0.0:
        return float(curve.fpr[crossing])
    before, after = gap[crossing - 1], gap[crossing]
    weight = before / (before - after)
    return float(curve.fpr[crossing - 1] + weight * (curve.fpr[crossing] - curve.fpr[crossing - 1]))


# ------------------------------------------------------------------------------------ operating points


@dataclass(frozen=True)
class FarOperatingPoint:
    """The most permissive threshold whose observed false-accept rate is at most ``target_far``.

    ``supported`` is false when there are fewer than ⌈1/target_far⌉ impostor pairs: such a rate
    cannot be observed on this data, so ``threshold``, ``achieved_far`` and ``tar`` are None.
    """

    target_far: float
    supported: bool
    negatives: int
    negatives_needed: int
    threshold: float | None
    achieved_far: float | None
    tar: float | None


def _operating_point(curve: RocCurve, target_far: float, negatives: int) -> FarOperatingPoint:
    needed = negatives_needed(target_far)
    if negatives < needed:
        return FarOperatingPoint(target_far, False, negatives, needed, None, None, None)
    # fpr is non-decreasing, so the allowed points are a prefix; the last one accepts the most.
    index = int(np.searchsorted(curve.fpr, target_far, side="right")) - 1
    threshold = curve.thresholds[index]
    if math.isinf(threshold):
        # Accept-nothing point: the smallest float above the best score has the same effect.
        threshold = float(np.nextafter(curve.thresholds[1], np.inf))
    return FarOperatingPoint(
        target_far=target_far,
        supported=True,
        negatives=negatives,
        negatives_needed=needed,
        threshold=float(threshold),
        achieved_far=float(curve.fpr[index]),
        tar=float(curve.tpr[index]),
    )


def threshold_at_far(scores: npt.ArrayLike, labels: npt.ArrayLike, far: float) -> FarOperatingPoint:
    """The lowest observed score ``t`` with FAR(t) ≤ ``far`` (so TAR is as high as the bound allows)."""
    score_array, label_array = _as_scores_labels(scores, labels)
    negatives = int(label_array.size - label_array.sum())
    return _operating_point(roc_curve(score_array, label_array), far, negatives)


# --------------------------------------------------------------------------------- threshold accuracy


def _candidate_thresholds(scores: FloatArray) -> FloatArray:
    """One threshold per distinct accept set: the lowest score, midpoints, then above the highest."""
    distinct = np.unique(scores)
    midpoints = (distinct[:-1] + distinct[1:]) / 2.0
    # Two adjacent floats can round their midpoint down onto the lower one; use the upper then.
    midpoints = np.where(midpoints > distinct[:-1], midpoints, distinct[1:])
    above_all = np.nextafter(distinct[-1], np.inf)
    return np.concatenate(([distinct[0]], midpoints, [above_all]))


def _accuracy_at(scores: FloatArray, labels: BoolArray, thresholds: FloatArray) -> FloatArray:
    """Accuracy of ``score >= t`` for every ``t`` (vectorised with sorted counts)."""
    positives = np.sort(scores[labels])
    negatives = np.sort(scores[~labels])
    true_accepts = positives.size - np.searchsorted(positives, thresholds, side="left")
    true_rejects = np.searchsorted(negatives, thresholds, side="left")
    return np.asarray((true_accepts + true_rejects) / scores.size, dtype=np.float64)


def best_accuracy_threshold(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy; ties go to the lowest such threshold."""
    score_array, label_array = _as_scores_labels(scores, labels)
    return _best_threshold(score_array, label_array)


def _best_threshold(scores: FloatArray, labels: BoolArray) -> tuple[float, float]:
    candidates = _candidate_thresholds(scores)
    accuracies = _accuracy_at(scores, labels, candidates)
    best = int(np.argmax(accuracies))
    return float(candidates[best]), float(accuracies[best])


def stratified_folds(labels: npt.ArrayLike, n_folds: int) -> IntArray:
    """Deterministic fold of every pair: the i-th genuine pair (in input order) goes to fold
    ``i mod n_folds`` and so does the i-th impostor pair, so every fold keeps the class balance.

    No randomness: the same pairs in the same order always give the same folds.
    """
    label_array = np.asarray(labels).astype(np.bool_)
    folds = np.empty(label_array.size, dtype=np.int64)
    for mask in (label_array, ~label_array):
        folds[mask] = np.arange(int(mask.sum())) % n_folds
    return folds


# ---------------------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class VerificationReport:
    pairs: int
    genuine_pairs: int
    impostor_pairs: int
    n_folds: int
    # k-fold protocol (as LFW's): each fold's threshold is the best one on the other k-1 folds.
    accuracy_mean: float
    accuracy_std: float  # population std (ddof=0) over folds, as LFW's reference scripts report
    fold_accuracies: tuple[float, ...]
    fold_thresholds: tuple[float, ...]
    # One threshold fitted on all pairs (optimistic: chosen on the data it is scored on).
    best_threshold: float
    best_accuracy: float
    auc: float
    eer: float
    tar_at_far: tuple[FarOperatingPoint, ...]

    def tar(self, far: float) -> float | None:
        """TAR at a requested FAR (None when the data cannot support that FAR)."""
        for point in self.tar_at_far:
            if math.isclose(point.target_far, far, rel_tol=1e-9):
                return point.tar
        raise KeyError(f"FAR {far} was not requested; have {[p.target_far for p in self.tar_at_far]}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verification_report(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    n_folds: int = 10,
    fars: Sequence[float] = DEFAULT_FARS,
    folds: npt.ArrayLike | None = None,
) -> VerificationReport:
    """Everything a verification benchmark reports, from pair scores and same/different labels.

    ``folds`` assigns each pair to a fold 0..n_folds-1 (e.g. LFW's ten sets from pairs.txt);
    by default :func:`stratified_folds` is used.
    """
    score_array, label_array = _as_scores_labels(scores, labels)
    if n_folds < 2:
        raise ValueError("n_folds must be at least 2")
    fold_array = (
        stratified_folds(label_array, n_folds) if folds is None else np.asarray(folds, dtype=np.int64)
    )
    if fold_array.shape != score_array.shape:
        raise ValueError("folds must give one fold index per pair")
    if set(np.unique(fold_array).tolist()) != set(range(n_folds)):
        raise ValueError(f"each fold 0..{n_folds - 1} needs at least one pair ({score_array.size} pairs)")

    fold_accuracies: list[float] = []
    fold_thresholds: list[float] = []
    for fold in range(n_folds):
        held_out = fold_array == fold
        train_labels = label_array[~held_out]
        if train_labels.all() or not train_labels.any():
            raise ValueError(f"the pairs outside fold {fold} are all of one class; use fewer folds")
        threshold, _ = _best_threshold(score_array[~held_out], train_labels)
        accuracy = _accuracy_at(score_array[held_out], label_array[held_out], np.array([threshold]))[0]
        fold_thresholds.append(threshold)
        fold_accuracies.append(float(accuracy))

    curve = roc_curve(score_array, label_array)
    negatives = int(label_array.size - label_array.sum())
    best_threshold, best_accuracy = _best_threshold(score_array, label_array)
    return VerificationReport(
        pairs=int(score_array.size),
        genuine_pairs=int(label_array.sum()),
        impostor_pairs=negatives,
        n_folds=n_folds,
        accuracy_mean=float(np.mean(fold_accuracies)),
        accuracy_std=float(np.std(fold_accuracies)),
        fold_accuracies=tuple(fold_accuracies),
        fold_thresholds=tuple(fold_thresholds),
        best_threshold=best_threshold,
        best_accuracy=best_accuracy,
        auc=roc_auc(curve),
        eer=equal_error_rate(curve),
        tar_at_far=tuple(_operating_point(curve, far, negatives) for far in fars),
    )


# ------------------------------------------------------------------------------------------ all pairs


@dataclass(frozen=True)
class PairScores:
    scores: FloatArray  # cosine similarity of every unordered pair i < j
    same: BoolArray
    first: IntArray  # index i of each pair
    second: IntArray  # index j of each pair


def all_pair_scores(embeddings: npt.ArrayLike, identities: Sequence[Hashable]) -> PairScores:
    """Every unordered pair of a labelled set of unit-norm embeddings (N·(N-1)/2 pairs)."""
    matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != len(identities):
        raise ValueError("embeddings must be (N, D) with one identity per row")
    norms = np.linalg.norm(matrix, axis=1)
    if not np.allclose(norms, 1.0, atol=_UNIT_NORM_TOLERANCE):
        raise ValueError("embeddings must be L2-normalised (unit norm) so that scores are cosines")
    _, codes = np.unique(np.asarray(identities, dtype=object).astype(str), return_inverse=True)
    first, second = np.triu_indices(matrix.shape[0], k=1)
    similarity = matrix @ matrix.T
    return PairScores(
        scores=similarity[first, second],
        same=codes[first] == codes[second],
        first=first.astype(np.int64),
        second=second.astype(np.int64),
    )


# ------------------------------------------------------------------------------------ identification


def subject_rankings(
    similarity: npt.ArrayLike, gallery_ids: Sequence[Hashable]
) -> tuple[list[list[Hashable]], list[list[float]]]:
    """Turn a (probes × gallery faces) similarity matrix into ranked subject lists per probe.

    A subject's score is its best face (the service's ``subject_score=max``); subjects are sorted by
    score, best first, ties in gallery order.
    """
    matrix = np.asarray(similarity, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != len(gallery_ids):
        raise ValueError("similarity must be (probes, gallery) with one gallery id per column")
    subjects = list(dict.fromkeys(gallery_ids))
    column_of = {subject: index for index, subject in enumerate(subjects)}
    columns = np.array([column_of[g] for g in gallery_ids], dtype=np.int64)
    per_subject = np.full((matrix.shape[0], len(subjects)), -np.inf)
    for face, subject_column in enumerate(columns):
        per_subject[:, subject_column] = np.maximum(per_subject[:, subject_column], matrix[:, face])
    order = np.argsort(-per_subject, axis=1, kind="stable")
    ranked_ids = [[subjects[j] for j in row] for row in order]
    ranked_scores = [per_subject[p, row].tolist() for p, row in enumerate(order)]
    return ranked_ids, ranked_scores


def _distinct_in_order(candidates: Sequence[Hashable]) -> list[Hashable]:
    # Face-level search results repeat a subject; its first (best) occurrence is its rank.
    return list(dict.fromkeys(candidates))


def rank_k_accuracy(
    candidate_ids: Sequence[Sequence[Hashable]],
    probe_ids: Sequence[Hashable],
    ks: Sequence[int] = (1, 5),
) -> dict[int, float]:
    """Closed-set identification: share of probes whose identity is among the first k subjects.

    ``candidate_ids[p]`` is probe p's search result, best first (faces or subjects; repeats collapse
    to their best rank). Every probe must be enrolled: pass only mated probes.
    """
    if len(candidate_ids) != len(probe_ids) or not probe_ids:
        raise ValueError("need one candidate list per probe, and at least one probe")
    if any(k < 1 for k in ks):
        raise ValueError("ranks start at 1")
    ranks = []
    for candidates, truth in zip(candidate_ids, probe_ids, strict=True):
        distinct = _distinct_in_order(candidates)
        ranks.append(distinct.index(truth) + 1 if truth in distinct else math.inf)
    rank_array = np.asarray(ranks, dtype=np.float64)
    return {k: float(np.mean(rank_array <= k)) for k in ks}


@dataclass(frozen=True)
class OpenSetPoint:
    """TPIR at a target FPIR (None values when there are too few non-mated probes for it)."""

    target_fpir: float
    supported: bool
    threshold: float | None
    achieved_fpir: float | None
    tpir: float | None


@dataclass(frozen=True)
class OpenSetReport:
    mated_probes: int
    non_mated_probes: int
    rank: int
    points: tuple[OpenSetPoint, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tpir_at_fpir(
    candidate_ids: Sequence[Sequence[Hashable]],
    candidate_scores: Sequence[Sequence[float]],
    probe_ids: Sequence[Hashable],
    enrolled_ids: Collection[Hashable],
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    *,
    rank: int = 1,
) -> OpenSetReport:
    """Open-set identification (NIST FRVT 1:N definitions) at a threshold on the candidate score.

    * FPIR(t): share of non-mated probes (identity not enrolled) whose best candidate scores ≥ t.
    * TPIR(t) = 1 − FNIR(t): share of mated probes whose identity is among the first ``rank``
      subjects with a score ≥ t.

    Each threshold is the most permissive one with FPIR ≤ target among the non-mated top scores;
    a target needs at least ⌈1/FPIR⌉ non-mated probes.
    """
    if not len(candidate_ids) == len(candidate_scores) == len(probe_ids):
        raise ValueError("need one candidate list and one score list per probe")
    if rank < 1:
        raise ValueError("rank starts at 1")
    enrolled = set(enrolled_ids)
    mated_hit: list[bool] = []  # true subject within the first `rank` subjects
    mated_scores: list[float] = []  # its score there (meaningful only for hits)
    non_mated_top: list[float] = []
    for ids, scores, truth in zip(candidate_ids, candidate_scores, probe_ids, strict=True):
        if len(ids) != len(scores) or not len(ids):
            raise ValueError("every probe needs a non-empty candidate list with one score per candidate")
        best_of = dict(zip(reversed(ids), reversed(scores), strict=True))  # first occurrence wins
        if truth in enrolled:
            hit = truth in _distinct_in_order(ids)[:rank]
            mated_hit.append(hit)
            mated_scores.append(float(best_of[truth]) if hit else -math.inf)
        else:
            non_mated_top.append(float(max(scores)))
    if not mated_scores or not non_mated_top:
        raise ValueError("open-set evaluation needs both mated and non-mated probes")

    hits = np.asarray(mated_hit, dtype=np.bool_)
    mated = np.asarray(mated_scores)
    non_mated = np.sort(np.asarray(non_mated_top))[::-1]
    lowest_score = float(min(non_mated[-1], mated[hits].min(initial=np.inf)))
    points = []
    for target in fpirs:
        if len(non_mated) < negatives_needed(target):
            points.append(OpenSetPoint(target, False, None, None, None))
            continue
        threshold = _lowest_threshold_within(non_mated, target, floor=lowest_score)
        achieved = float(np.mean(non_mated >= threshold))
        tpir = float(np.mean(hits & (mated >= threshold)))
        points.append(OpenSetPoint(target, True, threshold, achieved, tpir))
    return OpenSetReport(len(mated), len(non_mated), rank, tuple(points))


def _lowest_threshold_within(impostor_scores_desc: FloatArray, rate: float, *, floor: float) -> float:
    """Lowest threshold accepting at most ``rate`` of the impostors (scores sorted high to low);
    ``floor`` (the lowest score of interest) when every impostor may be accepted."""
    allowed = math.floor(rate * impostor_scores_desc.size + 1e-9)
    if allowed >= impostor_scores_desc.size:
        return floor
    # Accepting `allowed` impostors: just above the first one that must be rejected. Ties with it
    # move the threshold up to the next distinct score above, so none of them slips in.
    first_rejected = float(impostor_scores_desc[allowed])
    return float(np.nextafter(first_rejected, np.inf))
