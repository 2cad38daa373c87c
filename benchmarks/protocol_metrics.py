"""dfprep's metrics against DeepfakeBench's metric code, re-implemented from its formulas (nothing copied).

    .venv/bin/python benchmarks/protocol_metrics.py [--trials 2000] [--seed 0]

DeepfakeBench (github.com/SCLBD/DeepfakeBench) training/metrics/utils.py `get_test_metrics`:
* AUC: sklearn `roc_curve` (which drops collinear ROC points) + trapezoidal `auc`;
* EER: `fpr[nanargmin(|fnr − fpr|)]` over those points — the nearest ROC point, not the interpolated crossing;
* AP: sklearn `average_precision_score` — Σ (R_k − R_k−1) · P_k over distinct thresholds;
* ACC: `y_pred > 0.5`;
* video AUC: frames grouped by the name of their folder (`path.split('/')[-2]`), mean score, label =
  int(mean label).

Part 1 compares the frame metrics on random score sets with many ties. Part 2 builds an FF++-shaped test
set (140 originals, 4 methods × 140 fakes named like FF++'s, 32 frames per video, a few videos without a
face) and shows what DeepfakeBench's folder-name grouping and dropping face-less videos do to the pooled
video AUC. Prints numbers; asserts nothing (tests/torch/test_metrics.py and test_evaluate.py assert).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfprep.torch.metrics import accuracy, auc, average_precision, eer, video_scores  # noqa: E402


# ---------------------------------------------------------------- DeepfakeBench's formulas, re-implemented


def sklearn_like_roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct score, high to low, keeping only corner points, with (0, 0) first."""
    order = np.argsort(-scores, kind="mergesort")
    y, s = labels[order], scores[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last].astype(float)
    fps = (last + 1) - tps
    corners = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
    tps, fps = np.r_[0.0, tps[corners]], np.r_[0.0, fps[corners]]
    return fps / fps[-1], tps / tps[-1]


def dfb_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Trapezoidal area under the corner-point ROC."""
    fpr, tpr = sklearn_like_roc(labels, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def dfb_eer(labels: np.ndarray, scores: np.ndarray) -> float:
    """The false-positive rate of the ROC point whose miss rate is closest to it."""
    fpr, tpr = sklearn_like_roc(labels, scores)
    return float(fpr[np.nanargmin(np.abs((1 - tpr) - fpr))])


def dfb_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """Σ over distinct thresholds (high to low) of the recall gained × the precision there."""
    order = np.argsort(-scores, kind="mergesort")
    y, s = labels[order], scores[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last]
    recall = np.r_[0.0, tps / tps[-1]]
    return float(np.sum(np.diff(recall) * tps / (last + 1)))


def dfb_accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    """Fake when the score is strictly above 0.5."""
    return float(np.mean((scores > 0.5).astype(int) == labels))


def dfb_video_auc(frame_paths: list[str], labels: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """Frames grouped by their folder's name: (video AUC, number of 'videos')."""
    groups: dict[str, list[int]] = {}
    for index, path in enumerate(frame_paths):
        groups.setdefault(path.split("/")[-2], []).append(index)
    video_labels = np.array([int(labels[g].mean()) for g in groups.values()])
    video_scores_ = np.array([scores[g].mean() for g in groups.values()])
    return dfb_auc(video_labels, video_scores_), len(groups)


# ---------------------------------------------------------------- part 1: frame metrics on random data


def random_sets(trials: int, seed: int):
    """Random (labels, scores) with both classes and many ties (scores rounded to 1–3 decimals)."""
    rng = np.random.default_rng(seed)
    for _ in range(trials):
        size = int(rng.integers(6, 400))
        labels = rng.integers(0, 2, size)
        labels[:2] = (0, 1)
        scores = np.round(np.clip(rng.normal(0.45 + 0.15 * labels, 0.25), 0, 1), int(rng.integers(1, 4)))
        yield labels, scores


def compare_frame_metrics(trials: int, seed: int) -> None:
    """|dfprep − DeepfakeBench| per metric over the random sets: largest, and EER's spread by set size."""
    pairs = {"auc": (auc, dfb_auc), "ap": (average_precision, dfb_ap), "eer": (eer, dfb_eer),
             "acc": (accuracy, dfb_accuracy)}
    gaps: dict[str, list[tuple[int, bool, float]]] = {name: [] for name in pairs}
    for labels, scores in random_sets(trials, seed):
        for name, (ours, theirs) in pairs.items():
            gap = abs(ours(labels, scores) - theirs(labels, scores))
            gaps[name].append((labels.size, bool((scores == 0.5).any()), gap))
    print(f"== frame metrics, {trials} random score sets (6–400 frames, scores rounded: many ties) ==")
    for name in ("auc", "ap"):
        print(f"  {name:4s} max |dfprep − DeepfakeBench| {max(g for _, _, g in gaps[name]):.1e}")
    clean = [g for _, half, g in gaps["acc"] if not half]
    print(f"  acc  max gap {max(g for _, _, g in gaps['acc']):.3f} (only from scores exactly 0.5: dfprep calls "
          f"them fake, DeepfakeBench real); on the {len(clean)} sets without a 0.5 score: {max(clean):.1e}")
    for low, high in ((6, 100), (100, 401)):
        values = np.array([g for size, _, g in gaps["eer"] if low <= size < high])
        print(f"  eer  {low:3d}–{high - 1} frames: median gap {np.median(values):.4f}, 95th pct "
              f"{np.percentile(values, 95):.4f}, max {values.max():.4f} (interpolated crossing vs nearest ROC point)")


# ---------------------------------------------------------------- part 2: an FF++-shaped test set


def ffpp_like(seed: int, frames: int = 32, faceless: float = 0.03):
    """Frames of 140 originals and 4 × 140 fakes (FF++ names), per-method difficulty, some videos face-less."""
    rng = np.random.default_rng(seed)
    pairs = [(f"{i:03d}", f"{(i + 1) % 140:03d}") for i in range(140)]
    means = {"youtube": 0.35, "Deepfakes": 0.75, "Face2Face": 0.55, "FaceSwap": 0.7, "NeuralTextures": 0.5}
    rows = []  # (video_id, folder path, label, has_face)
    for target, source in pairs:
        rows.append((f"ffpp/youtube/c23/{target}", f"original/youtube/{target}", 0))
        for method in list(means)[1:]:
            name = f"{target}_{source}"
            rows.append((f"ffpp/{method}/c23/{name}", f"manipulated/{method}/{name}", 1))
    ids, paths, labels, scores, listed = [], [], [], [], {}
    for video_id, folder, label in rows:
        listed[video_id] = label
        if rng.random() < faceless:
            continue
        level = rng.normal(means[video_id.split("/")[1]], 0.12)
        for frame in range(frames):
            ids.append(video_id)
            paths.append(f"{folder}/{frame:03d}.png")
            labels.append(label)
            scores.append(float(np.clip(level + rng.normal(0, 0.15), 0, 1)))
    return ids, paths, np.array(labels), np.array(scores), listed


def compare_video_grouping(seed: int) -> None:
    """Pooled FF++ video AUC: dfprep (per video_id, face-less at 0.5 or dropped) vs DeepfakeBench (folder names)."""
    ids, paths, labels, scores, listed = ffpp_like(seed)
    videos = video_scores(ids, labels, scores)
    faceless = {vid: label for vid, label in listed.items() if vid not in videos}
    kept_labels, kept_scores = zip(*videos.values())
    scored = list(videos.values()) + [(label, 0.5) for label in faceless.values()]
    theirs, groups = dfb_video_auc(paths, labels, scores)
    print(f"== pooled FF++-shaped test set: {len(listed)} videos, {len(faceless)} without a face, "
          f"{len(ids)} frames ==")
    print(f"  dfprep, per video_id, face-less scored 0.5      videos {len(scored):4d}  "
          f"video AUC {auc(*zip(*scored)):.4f}")
    print(f"  dfprep, per video_id, face-less dropped         videos {len(videos):4d}  "
          f"video AUC {auc(kept_labels, kept_scores):.4f}")
    print(f"  DeepfakeBench, per folder name (methods merge)  videos {groups:4d}  video AUC {theirs:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    compare_frame_metrics(args.trials, args.seed)
    compare_video_grouping(args.seed)


if __name__ == "__main__":
    main()
