"""Metrics against values worked out by hand on small fixed arrays."""

import math

import numpy as np
import pytest

pytest.importorskip("torch")

from dfprep.torch.metrics import (accuracy, aggregate_scores, auc, average_precision, average_ranks, eer,  # noqa: E402
                                  roc_curve, video_scores)


def pairwise_auc(labels, scores) -> float:
    """The definition: over all (fake, real) pairs, 1 if the fake scores higher, 1/2 on a tie."""
    fakes = [s for s, y in zip(scores, labels) if y == 1]
    reals = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if f > r else 0.5 if f == r else 0.0 for f in fakes for r in reals)
    return wins / (len(fakes) * len(reals))


def test_auc_with_ties_matches_the_hand_count():
    labels = [0, 0, 1, 1, 1, 0]
    scores = [0.1, 0.5, 0.5, 0.8, 0.3, 0.3]
    # fake 0.5: beats 0.1 and 0.3, ties 0.5 → 2.5; fake 0.8: 3; fake 0.3: beats 0.1, ties 0.3 → 1.5; 7 of 9 pairs
    assert auc(labels, scores) == pytest.approx(7 / 9)
    assert average_ranks(np.array([0.1, 0.5, 0.5, 0.8, 0.3, 0.3])).tolist() == [1.0, 4.5, 4.5, 6.0, 2.5, 2.5]


def test_auc_extremes_and_random_agreement():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(auc([1, 1], [0.2, 0.3]))
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 200), np.round(rng.random(200), 1)  # many ties
    assert auc(labels, scores) == pytest.approx(pairwise_auc(labels.tolist(), scores.tolist()))


def test_roc_curve_has_one_point_per_distinct_score():
    fpr, tpr, thresholds = roc_curve([0, 1, 1, 0], [0.2, 0.7, 0.7, 0.4])
    assert thresholds[1:].tolist() == [0.7, 0.4, 0.2]
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0] and tpr.tolist() == [0.0, 1.0, 1.0, 1.0]


def test_eer_exact_crossing_and_interpolated_crossing():
    # reals 0.1 0.2 0.3 0.6, fakes 0.4 0.7 0.8 0.9: at threshold 0.6, fpr = 1/4 and miss rate = 1/4
    assert eer([0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9]) == pytest.approx(0.25)
    # reals 0.2 0.6, fakes 0.4 0.8 0.9: ROC (0, 2/3) → (1/2, 2/3); miss 1/3 meets fpr at 1/3 on that segment
    assert eer([0, 0, 1, 1, 1], [0.2, 0.6, 0.4, 0.8, 0.9]) == pytest.approx(1 / 3)
    assert eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert math.isnan(eer([0, 0], [0.1, 0.2]))


def stepwise_ap(labels, scores) -> float:
    """The definition, one threshold at a time: Σ over distinct scores t (high to low) of ΔRecall · Precision."""
    total, previous_recall, positives = 0.0, 0.0, sum(labels)
    for threshold in sorted(set(scores), reverse=True):
        called = [y for s, y in zip(scores, labels) if s >= threshold]
        recall = sum(called) / positives
        total += (recall - previous_recall) * sum(called) / len(called)
        previous_recall = recall
    return total


def test_average_precision_matches_the_hand_count():
    # by score: 0.9 F (P 1, R 1/3), 0.8 R, 0.7 F (P 2/3, R 2/3), 0.6 F (P 3/4, R 1), 0.2 R
    assert average_precision([1, 0, 1, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.2]) == pytest.approx(29 / 36)
    # a tie is one step: at 0.5 P = 1/2, R = 1/2; at 0.2 P = 2/3, R = 1 → 1/4 + 1/3
    assert average_precision([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(7 / 12)
    assert average_precision([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert average_precision([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert average_precision([1, 1], [0.2, 0.3]) == 1.0  # no reals: every call is right
    assert math.isnan(average_precision([0, 0], [0.2, 0.3]))  # no fakes: undefined
    rng = np.random.default_rng(1)
    labels, scores = rng.integers(0, 2, 300), np.round(rng.random(300), 1)  # many ties
    assert average_precision(labels, scores) == pytest.approx(stepwise_ap(labels.tolist(), scores.tolist()))


def test_accuracy_at_one_half():
    assert accuracy([0, 1, 1, 0], [0.2, 0.5, 0.4, 0.7]) == 0.5  # 0.5 counts as fake


def test_video_aggregation_strategies():
    frames = np.array([0.9, 0.95, 0.1, 0.2, 0.3, 0.35, 0.2, 0.1])
    assert aggregate_scores(frames, "mean") == pytest.approx(0.3875)
    assert aggregate_scores(frames, "max") == pytest.approx(0.95)
    # 2 of 8 frames ≥ 0.8 is not more than a quarter: the mean of all frames
    assert aggregate_scores(frames, "confident") == pytest.approx(0.3875)
    frames[2] = 0.85  # now 3 of 8: the mean of the confident frames
    assert aggregate_scores(frames, "confident") == pytest.approx((0.9 + 0.95 + 0.85) / 3)
    assert aggregate_scores(np.array([]), "mean") == 0.5
    with pytest.raises(ValueError):
        aggregate_scores(frames, "median")


def test_video_scores_group_by_video_and_check_labels():
    videos = video_scores(["a", "b", "a", "b"], [1, 0, 1, 0], [0.6, 0.1, 0.8, 0.3])
    assert videos == {"a": (1, pytest.approx(0.7)), "b": (0, pytest.approx(0.2))}
    with pytest.raises(ValueError, match="both real and fake"):
        video_scores(["a", "a"], [0, 1], [0.1, 0.2])
