"""Detection metrics written out in numpy: rank AUC with ties, ROC, EER, AP, accuracy and per-video aggregation.

Labels are 1 = fake (the positive class), scores are fake probabilities. Video aggregation strategies:

* ``mean`` (default): the mean of the video's frame scores.
* ``max``: the highest frame score (one convincing frame is enough).
* ``confident``: if more than ``CONFIDENT_FRACTION`` of the frames score at least ``CONFIDENT_SCORE``
  (confidently fake), the mean of those frames; otherwise the mean of all frames. A fake whose artefacts
  show in only some frames (pose, occlusion) is then not diluted by its clean-looking frames, while a
  real video with a few stray high scores keeps its overall mean.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

AGGREGATES = ("mean", "max", "confident")
CONFIDENT_SCORE = 0.8
CONFIDENT_FRACTION = 0.25
NO_FACE_SCORE = 0.5  # a video without any face cannot be judged: it scores as a coin flip
Values = Sequence[float] | np.ndarray


def _labels_scores(labels: Values, scores: Values) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-D arrays of equal length."""
    y, s = np.asarray(labels).astype(np.int64).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    return y, s


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks where tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], values.size]
    ranks = np.empty(values.size, np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def auc(labels: Values, scores: Values) -> float:
    """ROC AUC as Mann–Whitney U: P(fake outscores real), ties counting one half; NaN with one class only."""
    y, s = _labels_scores(labels, scores)
    positives, negatives = int(y.sum()), int(y.size - y.sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    rank_sum = average_ranks(s)[y == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def roc_curve(labels: Values, scores: Values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) calling fake at score ≥ threshold: (0, 0), one point per distinct score, (1, 1)."""
    y, s = _labels_scores(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.array([], np.int64)
    true_positives = np.cumsum(y)[last_of_value]
    false_positives = (last_of_value + 1) - true_positives
    positives, negatives = max(int(y.sum()), 1), max(int(y.size - y.sum()), 1)
    fpr = np.r_[0.0, false_positives / negatives]
    tpr = np.r_[0.0, true_positives / positives]
    return fpr, tpr, np.r_[np.inf, s[last_of_value]]


def eer(labels: Values, scores: Values) -> float:
    """Equal error rate: where the ROC's miss rate (1 - tpr) meets its false-alarm rate, linearly interpolated."""
    y, _ = _labels_scores(labels, scores)
    if y.sum() == 0 or y.sum() == y.size:
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    gap = (1.0 - tpr) - fpr  # starts at 1, ends at -1, never increases
    crossing = int(np.flatnonzero(gap <= 0)[0])
    before, after = gap[crossing - 1], gap[crossing]
    weight = before / (before - after)
    return float(fpr[crossing - 1] + weight * (fpr[crossing] - fpr[crossing - 1]))


def average_precision(labels: Values, scores: Values) -> float:
    """AP the way DeepfakeBench reports it (sklearn's average_precision_score): Σ_k (R_k − R_k−1) · P_k.

    k runs over the distinct scores from the highest down (tied scores form one step), P_k and R_k are the
    precision and recall of calling fake at score ≥ that value; no interpolation. NaN without fakes.
    """
    y, s = _labels_scores(labels, scores)
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    true_positives = np.cumsum(y)[last_of_value]
    precision = true_positives / (last_of_value + 1)
    recall = true_positives / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def accuracy(labels: Values, scores: Values, threshold: float = 0.5) -> float:
    """Share of correct calls, predicting fake at score ≥ threshold."""
    y, s = _labels_scores(labels, scores)
    return float(np.mean((s >= threshold).astype(np.int64) == y)) if y.size else float("nan")


def aggregate_scores(frame_scores: np.ndarray, strategy: str = "mean") -> float:
    """One video's score from its frame scores (see the module docstring for the strategies)."""
    if frame_scores.size == 0:
        return NO_FACE_SCORE
    if strategy == "mean":
        return float(frame_scores.mean())
    if strategy == "max":
        return float(frame_scores.max())
    if strategy == "confident":
        confident = frame_scores[frame_scores >= CONFIDENT_SCORE]
        if confident.size > CONFIDENT_FRACTION * frame_scores.size:
            return float(confident.mean())
        return float(frame_scores.mean())
    raise ValueError(f"aggregate must be one of {AGGREGATES}, got {strategy!r}")


def video_scores(video_ids: Iterable[str], labels: Values, scores: Values,
                 strategy: str = "mean") -> dict[str, tuple[int, float]]:
    """video_id → (label, aggregated score); a video whose frames disagree on the label is an error."""
    ids = list(video_ids)
    y, s = _labels_scores(labels, scores)
    if len(ids) != y.size:
        raise ValueError(f"{len(ids)} video ids for {y.size} scores")
    frames: dict[str, list[int]] = {}
    for position, video_id in enumerate(ids):
        frames.setdefault(video_id, []).append(position)
    result = {}
    for video_id, positions in frames.items():
        video_labels = set(y[positions].tolist())
        if len(video_labels) != 1:
            raise ValueError(f"video {video_id!r} has frames labelled both real and fake")
        result[video_id] = (video_labels.pop(), aggregate_scores(s[positions], strategy))
    return result
