"""Verification/identification metrics: hand-checkable cases and brute-force references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.evaluation.metrics import (
    all_pair_scores,
    best_accuracy_threshold,
    equal_error_rate,
    negatives_needed,
    rank_k_accuracy,
    roc_auc,
    roc_curve,
    stratified_folds,
    subject_rankings,
    threshold_at_far,
    tpir_at_fpir,
    verification_report,
)

# ------------------------------------------------------------------------------ brute-force references


def brute_rates(scores, labels, threshold):
    accepted = [s >= threshold for s in scores]
    positives = sum(labels)
    negatives = len(labels) - positives
    tp = sum(1 for a, y in zip(accepted, labels, strict=True) if a and y)
    fp = sum(1 for a, y in zip(accepted, labels, strict=True) if a and not y)
    return fp / negatives, tp / positives


def brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def brute_accuracy(scores, labels, threshold):
    return sum((s >= threshold) == bool(y) for s, y in zip(scores, labels, strict=True)) / len(scores)


def brute_best_threshold(scores, labels):
    """Every threshold between neighbouring distinct scores, plus below/above all; first best wins."""
    distinct = sorted(set(scores))
    candidates = [distinct[0]] + [(a + b) / 2 for a, b in itertools.pairwise(distinct)]
    candidates.append(distinct[-1] + 1.0)
    best_t, best_acc = candidates[0], -1.0
    for t in candidates:
        acc = brute_accuracy(scores, labels, t)
        if acc > best_acc:
            best_t, best_acc = t, acc
    return best_t, best_acc


def brute_kfold(scores, labels, n_folds):
    """LFW protocol written out: fold i = i-th genuine / i-th impostor pair modulo n_folds."""
    folds, counters = [], {True: 0, False: 0}
    for y in labels:
        folds.append(counters[bool(y)] % n_folds)
        counters[bool(y)] += 1
    accuracies = []
    for k in range(n_folds):
        train = [(s, y) for s, y, f in zip(scores, labels, folds, strict=True) if f != k]
        test = [(s, y) for s, y, f in zip(scores, labels, folds, strict=True) if f == k]
        threshold, _ = brute_best_threshold([s for s, _ in train], [y for _, y in train])
        accuracies.append(brute_accuracy([s for s, _ in test], [y for _, y in test], threshold))
    return accuracies


# Scores on a coarse grid so ties happen often.
pair_sets = st.integers(min_value=2, max_value=40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-6, 6).map(lambda v: v / 4), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n).filter(lambda ys: 0 < sum(ys) < len(ys)),
    )
)


# ------------------------------------------------------------------------------------- hand-checkable


def test_perfectly_separable():
    scores = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]
    labels = [1, 1, 1, 0, 0, 0]
    curve = roc_curve(scores, labels)
    assert roc_auc(curve) == 1.0
    assert equal_error_rate(curve) == 0.0
    threshold, accuracy = best_accuracy_threshold(scores, labels)
    assert accuracy == 1.0
    assert threshold == pytest.approx(0.5)  # midway between the classes
    point = threshold_at_far(scores, labels, 1 / 3)
    assert point.supported
    assert point.tar == 1.0
    # The most permissive threshold within the bound: the top impostor (one of three) may pass.
    assert point.threshold == 0.3
    assert point.achieved_far == pytest.approx(1 / 3)


def test_reversed_scores():
    scores = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    labels = [1, 1, 1, 0, 0, 0]
    curve = roc_curve(scores, labels)
    assert roc_auc(curve) == 0.0
    assert equal_error_rate(curve) == 1.0
    threshold, accuracy = best_accuracy_threshold(scores, labels)
    assert accuracy == 0.5  # accept everyone (or no one): half right
    assert threshold == 0.1  # ties between thresholds go to the lowest


def test_all_scores_tied():
    scores = [0.5] * 6
    labels = [1, 0, 1, 0, 1, 0]
    curve = roc_curve(scores, labels)
    np.testing.assert_array_equal(curve.fpr, [0.0, 1.0])
    np.testing.assert_array_equal(curve.tpr, [0.0, 1.0])
    assert roc_auc(curve) == 0.5
    assert equal_error_rate(curve) == 0.5
    # A tie is one operating point: FAR 1/3 is only reachable by accepting nothing.
    point = threshold_at_far(scores, labels, 1 / 3)
    assert point.tar == 0.0
    assert point.achieved_far == 0.0
    assert point.threshold is not None
    assert point.threshold > 0.5


def test_tie_between_classes_counts_half_in_auc():
    scores = [0.9, 0.5, 0.5, 0.1]
    labels = [1, 1, 0, 0]
    assert roc_auc(roc_curve(scores, labels)) == pytest.approx(3.5 / 4)


def test_equal_error_rate_hand_case():
    # Threshold 0.5 accepts genuine 0.9, 0.6 and impostor 0.5: FPR = FNR = 1/3.
    scores = [0.9, 0.6, 0.4, 0.5, 0.3, 0.1]
    labels = [1, 1, 1, 0, 0, 0]
    assert equal_error_rate(roc_curve(scores, labels)) == pytest.approx(1 / 3)


def test_equal_error_rate_interpolates_between_points():
    # ROC points (0,0) (0,.5) (.5,.5) (.5,1) (1,1): FPR - FNR jumps from -.5 to 0 at (.5,.5).
    # And for (0,0) (0,0.5) (1,0.5) (1,1): the crossing lies on the flat segment at FPR = 0.5.
    scores = [0.9, 0.5, 0.1, 0.05]
    labels = [1, 0, 1, 0]
    assert equal_error_rate(roc_curve(scores, labels)) == pytest.approx(0.5)
    scores = [0.9, 0.5, 0.4, 0.1]
    labels = [1, 0, 0, 1]
    # (0,0) (0,.5) (.5,.5) (1,.5) (1,1): gap -.5 → 0 at (.5,.5)
    assert equal_error_rate(roc_curve(scores, labels)) == pytest.approx(0.5)


def test_threshold_at_far_accepts_the_allowed_number_of_impostors():
    impostors = np.arange(100) / 100.0  # 0.00 .. 0.99, distinct
    genuine = np.array([0.995, 0.985, 0.975, 0.5])
    scores = np.concatenate([genuine, impostors])
    labels = np.concatenate([np.ones(4, bool), np.zeros(100, bool)])
    point = threshold_at_far(scores, labels, 0.01)  # one impostor of 100 may pass
    assert point.supported
    assert point.threshold == pytest.approx(0.985)  # 0.99 passes, 0.98 does not
    assert point.achieved_far == pytest.approx(0.01)
    assert point.tar == pytest.approx(0.5)
    assert sum(s >= point.threshold for s in impostors) == 1


def test_too_few_negatives_is_flagged_not_guessed():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=80)
    labels = np.arange(80) < 30  # 50 impostors
    report = verification_report(scores, labels, fars=(1e-1, 1e-2))
    supported, unsupported = report.tar_at_far
    assert supported.supported
    assert supported.tar is not None
    assert not unsupported.supported
    assert unsupported.tar is None
    assert unsupported.threshold is None
    assert unsupported.negatives_needed == 100
    assert report.tar(1e-2) is None
    assert negatives_needed(1e-3) == 1000
    assert negatives_needed(1e-4) == 10000


def test_report_on_separable_data():
    scores = np.concatenate([np.linspace(0.6, 0.9, 30), np.linspace(-0.2, 0.3, 300)])
    labels = np.arange(330) < 30
    report = verification_report(scores, labels)
    assert report.accuracy_mean == 1.0
    assert report.accuracy_std == 0.0
    assert report.auc == 1.0
    assert report.eer == 0.0
    assert (report.pairs, report.genuine_pairs, report.impostor_pairs) == (330, 30, 300)
    assert all(0.3 < t < 0.6 for t in report.fold_thresholds)
    assert report.tar(1e-2) == 1.0
    assert report.tar(1e-4) is None
    assert report.to_dict()["tar_at_far"][0]["target_far"] == 1e-1


def test_stratified_folds_are_fixed_and_balanced():
    labels = np.array([1] * 20 + [0] * 180, dtype=bool)
    folds = stratified_folds(labels, 10)
    np.testing.assert_array_equal(folds, stratified_folds(labels, 10))
    for k in range(10):
        assert labels[folds == k].sum() == 2
        assert (~labels[folds == k]).sum() == 18


def test_explicit_folds_are_used():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=60)
    labels = rng.random(60) < 0.5
    blocks = np.repeat(np.arange(3), 20)
    report = verification_report(scores, labels, n_folds=3, folds=blocks)
    expected = []
    for k in range(3):
        threshold, _ = brute_best_threshold(list(scores[blocks != k]), list(labels[blocks != k]))
        expected.append(brute_accuracy(list(scores[blocks == k]), list(labels[blocks == k]), threshold))
    assert report.fold_accuracies == pytest.approx(expected)


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, float("nan")], [1, 0], "finite"),
        ([0.1, 0.2], [1, 1], "genuine and one impostor"),
        ([0.1, 0.2, 0.3], [1, 0], "differ in length"),
        ([0.1, 0.2], [2, 0], "0/1"),
    ],
)
def test_bad_input_is_rejected(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        roc_curve(scores, labels)


def test_too_many_folds_for_the_data():
    with pytest.raises(ValueError, match="fold"):
        verification_report([0.1, 0.9, 0.4, 0.3], [1, 1, 0, 0], n_folds=10)


# ------------------------------------------------------------------------- against brute force


@settings(max_examples=150, deadline=None)
@given(pair_sets)
def test_roc_matches_brute_force(data):
    scores, labels = data
    curve = roc_curve(scores, labels)
    assert np.all(np.diff(curve.fpr) >= 0)
    assert np.all(np.diff(curve.tpr) >= 0)
    for fpr, tpr, threshold in zip(curve.fpr, curve.tpr, curve.thresholds, strict=True):
        assert (fpr, tpr) == pytest.approx(brute_rates(scores, labels, threshold))
    assert roc_auc(curve) == pytest.approx(brute_auc(scores, labels))


@settings(max_examples=150, deadline=None)
@given(pair_sets)
def test_eer_lies_between_brute_force_bounds(data):
    scores, labels = data
    eer = equal_error_rate(roc_curve(scores, labels))
    rates = [brute_rates(scores, labels, t) for t in [*sorted(set(scores)), math.inf]]
    upper = min(max(fpr, 1 - tpr) for fpr, tpr in rates)
    lower = max(min(fpr, 1 - tpr) for fpr, tpr in rates)
    assert lower - 1e-12 <= eer <= upper + 1e-12


@settings(max_examples=150, deadline=None)
@given(pair_sets, st.sampled_from([0.05, 0.1, 0.25, 0.5]))
def test_threshold_at_far_matches_brute_force(data, far):
    scores, labels = data
    point = threshold_at_far(scores, labels, far)
    negatives = len(labels) - sum(labels)
    if negatives < negatives_needed(far):
        assert not point.supported
        return
    # Brute force: among all accept sets, the best TAR whose FAR stays within the target.
    feasible = [brute_rates(scores, labels, t) for t in [*set(scores), math.inf]]
    best_tar = max(tpr for fpr, tpr in feasible if fpr <= far)
    assert point.tar == pytest.approx(best_tar)
    assert point.threshold is not None
    assert brute_rates(scores, labels, point.threshold) == pytest.approx((point.achieved_far, point.tar))


@settings(max_examples=100, deadline=None)
@given(pair_sets)
def test_best_threshold_matches_brute_force(data):
    scores, labels = data
    threshold, accuracy = best_accuracy_threshold(scores, labels)
    _, brute_best = brute_best_threshold(scores, labels)
    assert accuracy == pytest.approx(brute_best)
    assert brute_accuracy(scores, labels, threshold) == pytest.approx(accuracy)


def test_kfold_accuracy_matches_brute_force():
    rng = np.random.default_rng(7)
    for trial in range(5):
        n = 200 + 37 * trial
        labels = rng.random(n) < 0.3
        scores = np.round(rng.normal(loc=labels * 1.2, scale=1.0), 2)  # rounding makes ties
        report = verification_report(scores, labels)
        expected = brute_kfold(list(scores), list(labels), 10)
        assert report.fold_accuracies == pytest.approx(expected)
        assert report.accuracy_mean == pytest.approx(np.mean(expected))
        assert report.accuracy_std == pytest.approx(np.std(expected))


# -------------------------------------------------------------------------------------------- all pairs


def test_all_pair_scores():
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    pairs = all_pair_scores(embeddings, ["a", "b", "a", "b"])
    assert pairs.scores.size == 6
    rows = zip(pairs.first, pairs.second, pairs.scores, pairs.same, strict=True)
    lookup = {(i, j): (s, y) for i, j, s, y in rows}
    assert lookup[(0, 2)] == (pytest.approx(1.0), True)
    assert lookup[(1, 3)] == (pytest.approx(0.8), True)
    assert lookup[(0, 3)] == (pytest.approx(0.6), False)
    assert pairs.same.sum() == 2
    with pytest.raises(ValueError, match="L2-normalised"):
        all_pair_scores(embeddings * 2.0, ["a", "b", "a", "b"])


# ------------------------------------------------------------------------------------- identification


def test_subject_rankings_take_each_subjects_best_face():
    similarity = np.array(
        [
            [0.2, 0.9, 0.1, 0.5],  # best: y (0.9), then x (0.5 from its second face), then z
            [0.3, 0.1, 0.8, 0.0],
        ]
    )
    ids, scores = subject_rankings(similarity, ["x", "y", "z", "x"])
    assert ids[0] == ["y", "x", "z"]
    assert scores[0] == pytest.approx([0.9, 0.5, 0.1])
    assert ids[1] == ["z", "x", "y"]


def test_rank_k_accuracy():
    candidates = [["a", "b", "c"], ["b", "a", "c"], ["c", "c", "b", "a"], ["b", "c", "d"]]
    truth = ["a", "a", "a", "a"]
    ranks = rank_k_accuracy(candidates, truth, ks=(1, 2, 3))
    # ranks: 1, 2, 3 (the repeated c counts once), absent
    assert ranks == {1: 0.25, 2: 0.5, 3: 0.75}


def test_tpir_at_fpir_hand_case():
    # Ten non-mated probes with top scores 0.0 .. 0.9; FPIR 0.1 lets exactly one through (0.9).
    non_mated_ids = [["a"]] * 10
    non_mated_scores = [[v / 10] for v in range(10)]
    mated_ids = [["a", "b"], ["b", "a"], ["a", "b"], ["c", "a"]]
    mated_scores = [[0.95, 0.1], [0.97, 0.96], [0.85, 0.2], [0.99, 0.92]]
    report = tpir_at_fpir(
        [*mated_ids, *non_mated_ids],
        [*mated_scores, *non_mated_scores],
        ["a", "a", "a", "a"] + ["stranger"] * 10,
        enrolled_ids={"a", "b", "c"},
        fpirs=(0.1, 0.01),
    )
    assert (report.mated_probes, report.non_mated_probes) == (4, 10)
    point, unsupported = report.points
    assert point.achieved_fpir == pytest.approx(0.1)
    assert point.threshold is not None
    assert 0.8 < point.threshold <= 0.9
    # Rank 1 hits: probes 1 (0.95) and 3 (0.85 ≥ threshold); probes 2 and 4 have another subject first.
    assert point.tpir == pytest.approx(0.5)
    assert not unsupported.supported
    assert unsupported.tpir is None
    at_rank_two = tpir_at_fpir(
        [*mated_ids, *non_mated_ids],
        [*mated_scores, *non_mated_scores],
        ["a", "a", "a", "a"] + ["stranger"] * 10,
        enrolled_ids={"a", "b", "c"},
        fpirs=(0.1,),
        rank=2,
    )
    assert at_rank_two.points[0].tpir == pytest.approx(1.0)
