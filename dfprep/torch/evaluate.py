"""Score a checkpoint on one or more OUT folders: frame and video AUC, ACC, EER — the cross-dataset table.

Videos listed in an OUT's videos.parquet for the split but without any face sample (no face found,
undecodable file) still count at the video level with score 0.5, and are reported as
``videos_without_faces``: dropping them would flatter a detector on hard data.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dfprep.errors import DfprepError
from dfprep.integrity import require_complete
from dfprep.shards import Storage
from dfprep.torch._require import require_torch
from dfprep.torch.data import FaceShards
from dfprep.torch.metrics import AGGREGATES, NO_FACE_SCORE, accuracy, auc, eer, video_scores
from dfprep.torch.models import ModelBuildError, check_trusted_names, fake_logit, model_from_checkpoint
from dfprep.torch.transforms import Normalize

torch = require_torch()

VIDEOS_TABLE = "videos.parquet"
DEFAULT_MEAN = DEFAULT_STD = (0.5, 0.5, 0.5)
TABLE_COLUMNS = ("dataset", "frames", "videos", "frame_auc", "video_auc", "acc", "eer", "videos_without_faces")


@dataclass
class FrameScores:
    """Fake probabilities of every frame streamed, with their labels and videos."""

    scores: np.ndarray
    labels: np.ndarray
    video_ids: list[str]
    datasets: list[str]


def pick_device(name: str = "auto") -> Any:
    """'auto' → CUDA when available, else CPU; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A dfprep checkpoint, loaded with weights_only=True (tensors and plain types only, never arbitrary pickles)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a loadable checkpoint"
        raise ModelBuildError(f"{path}: not a loadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict):
        raise ModelBuildError(f"{path}: not a dfprep checkpoint (a {type(payload).__name__}, not a mapping)")
    return payload


def load_detector(path: str | os.PathLike[str], device: Any, model: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The checkpoint's model, weights loaded, in eval mode on `device`, and the checkpoint itself.

    The checkpoint may only name a registered model; a `package.module:factory` it records is imported only
    when the caller (the user's --model) names the same factory.
    """
    payload = load_checkpoint(path)
    recorded = payload.get("model_name")
    if model is not None and recorded != model:
        raise ModelBuildError(f"{path} records the model {str(recorded)[:80]!r}, but --model says {model!r}")
    network = model_from_checkpoint(payload, str(path), check_trusted_names([model] if model else []))
    normalizer(payload.get("config") or {})  # refuse a malformed mean/std before any data is read
    return network.to(device).eval(), payload


def normalizer(config: dict[str, Any]) -> Normalize:
    """The normalisation the model was trained with (three plain numbers each, else a one-line error)."""
    mean, std = config.get("mean", DEFAULT_MEAN), config.get("std", DEFAULT_STD)
    for name, values in (("mean", mean), ("std", std)):
        if not isinstance(values, (list, tuple)) or len(values) != 3 or \
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ModelBuildError(f"checkpoint config {name} must be three numbers, got {str(values)[:60]}")
    return Normalize(mean, std)


@torch.no_grad()
def score_frames(model: Any, loader: Any, device: Any) -> FrameScores:
    """Run the model over a loader of FaceShards batches; sigmoid of the fake logit per frame."""
    scores, labels, video_ids, datasets = [], [], [], []
    use_amp = device.type == "cuda"
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=use_amp):
            logits = fake_logit(model(images))
        scores.append(torch.sigmoid(logits.float()).cpu().numpy())
        labels.append(batch["label"].numpy())
        video_ids += list(batch["video_id"])
        datasets += list(batch["dataset"])
    if not scores:
        return FrameScores(np.zeros(0), np.zeros(0, np.int64), [], [])
    return FrameScores(np.concatenate(scores), np.concatenate(labels), video_ids, datasets)


def listed_videos(out: str, split: str) -> dict[str, int]:
    """video_id → label of every video videos.parquet lists for the split ({} when the table is absent)."""
    storage = Storage(out)
    if not storage.exists(VIDEOS_TABLE):
        return {}
    try:
        table = storage.read_table(VIDEOS_TABLE).select(["video_id", "label", "split"]).to_pylist()
    except (OSError, ValueError, KeyError) as exc:  # pyarrow's errors derive from these
        raise DfprepError(f"{storage.path(VIDEOS_TABLE)} is unreadable ({type(exc).__name__}); rerun the extract "
                          "command to rebuild it") from None
    return {row["video_id"]: int(row["label"]) for row in table if row["split"] == split}


def dataset_name(out: str, frames: FrameScores) -> str:
    """The dataset column: the samples' own dataset name, else the folder's name."""
    names = Counter(name for name in frames.datasets if name)
    return names.most_common(1)[0][0] if names else Path(out).name


def _finite(value: float) -> float | None:
    """NaN (metric undefined: one class only) as None, so JSON stays valid."""
    return None if math.isnan(value) else round(value, 6)


def score_table_row(out: str, frames: FrameScores, split: str, aggregate: str) -> dict[str, Any]:
    """One OUT's row: frame metrics, then video AUC with face-less videos at 0.5."""
    videos = video_scores(frames.video_ids, frames.labels, frames.scores, aggregate)
    missing = {vid: label for vid, label in listed_videos(out, split).items() if vid not in videos}
    for video_id, label in missing.items():
        videos[video_id] = (label, NO_FACE_SCORE)
    video_labels = [label for label, _ in videos.values()]
    video_values = [score for _, score in videos.values()]
    return {
        "dataset": dataset_name(out, frames), "out": out, "split": split, "aggregate": aggregate,
        "frames": int(frames.scores.size), "videos": len(videos),
        "frame_auc": _finite(auc(frames.labels, frames.scores)),
        "video_auc": _finite(auc(video_labels, video_values)),
        "acc": _finite(accuracy(frames.labels, frames.scores)), "eer": _finite(eer(frames.labels, frames.scores)),
        "video_acc": _finite(accuracy(video_labels, video_values)),
        "video_eer": _finite(eer(video_labels, video_values)),
        "videos_without_faces": len(missing),
    }


def frame_loader(out: str | Sequence[str], split: str, config: dict[str, Any], batch_size: int, workers: int,
                 maps: str | None = None, skip_bad_shards: bool = False) -> Any:
    """A fixed-order DataLoader over one split, normalised the way the model was trained."""
    dataset = FaceShards(out, split=split, maps=maps, transform=normalizer(config), skip_bad_shards=skip_bad_shards)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                       pin_memory=torch.cuda.is_available())


def require_outputs(out_dirs: Sequence[str | os.PathLike[str]], allow_incomplete: bool = False) -> None:
    """Refuse an OUT folder that is incomplete or damaged (cheap check): its scores would silently be wrong."""
    for out in out_dirs:
        if os.path.isdir(out) or "://" in str(out):
            require_complete(str(out), allow_incomplete)


def evaluate(checkpoint: str | os.PathLike[str], out_dirs: Sequence[str], split: str = "test", batch_size: int = 64,
             aggregate: str = "mean", workers: int = 0, device: str = "auto",
             json_path: str | os.PathLike[str] | None = None, skip_bad_shards: bool = False,
             model: str | None = None, allow_incomplete: bool = False) -> list[dict[str, Any]]:
    """Score one checkpoint on every OUT folder; one row per OUT (optionally also written as JSON).

    An incomplete or damaged OUT is refused unless `allow_incomplete`; `model` names the factory to trust
    when the checkpoint records a `package.module:factory` instead of a registered model.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    require_outputs(out_dirs, allow_incomplete)
    target = pick_device(device)
    network, payload = load_detector(checkpoint, target, model)
    rows = []
    for out in out_dirs:
        loader = frame_loader(str(out), split, payload["config"], batch_size, workers,
                              skip_bad_shards=skip_bad_shards)
        rows.append(score_table_row(str(out), score_frames(network, loader, target), split, aggregate))
    if json_path is not None:
        Path(json_path).write_text(json.dumps({"checkpoint": str(checkpoint), "rows": rows}, indent=1) + "\n")
    return rows


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A fixed-width text table of the result rows ('-' where a metric is undefined)."""
    def cell(value: Any) -> str:
        """One value as printed."""
        if value is None:
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)
