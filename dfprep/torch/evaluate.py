"""Score a checkpoint on one or more OUT folders: frame and video AUC, AP, ACC, EER — the cross-dataset table.

Videos listed in an OUT's videos.parquet for the split but without any face sample (no face found,
undecodable file) by default still count at the video level with score 0.5, and are reported as
``videos_without_faces``: dropping them would flatter a detector on hard data. ``faceless="drop"`` leaves
them out, as DeepfakeBench's and CADDM's test code do (they only ever see videos with face frames); the
``faceless`` column says which was used.

An OUT whose split holds fakes of several methods (FF++) also gets one row per method beside the pooled
row: that method's fakes against the originals they derive from (FF++: every youtube original of the
split), as DeepfakeBench's FF-DF/FF-F2F/FF-FS/FF-NT test sets pair each method with the shared FF-real.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dfprep.errors import DfprepError
from dfprep.io.integrity import require_complete
from dfprep.io.layout import VIDEOS_TABLE, shard_split
from dfprep.io.storage import Storage
from dfprep.torch._require import require_torch
from dfprep.torch.data import FaceShards
from dfprep.torch.metrics import AGGREGATES, NO_FACE_SCORE, accuracy, auc, average_precision, eer, video_scores
from dfprep.torch.models import ModelBuildError, check_trusted_names, fake_logit, model_from_checkpoint
from dfprep.torch.transforms import Normalize

torch = require_torch()

DEFAULT_MEAN = DEFAULT_STD = (0.5, 0.5, 0.5)
TABLE_COLUMNS = ("dataset", "frames", "videos", "frame_auc", "video_auc", "ap", "acc", "eer", "videos_without_faces",
                 "faceless")
FACELESS = {"score": "scored 0.5", "drop": "dropped"}  # --faceless: what happens to listed videos without a face
# DeepfakeBench's names of the FF++ per-method test sets (preprocessing/rearrange.py)
FFPP_METHOD_ROWS = {"Deepfakes": "FF-DF", "Face2Face": "FF-F2F", "FaceSwap": "FF-FS", "NeuralTextures": "FF-NT",
                    "FaceShifter": "FF-FH", "DeepFakeDetection": "DFD"}


@dataclass
class FrameScores:
    """Fake probabilities of every frame streamed, with their labels, videos and methods."""

    scores: np.ndarray
    labels: np.ndarray
    video_ids: list[str]
    datasets: list[str]
    methods: list[str] = field(default_factory=list)

    def subset(self, keep: np.ndarray) -> "FrameScores":
        """The frames where `keep` is true."""
        picked = np.flatnonzero(keep)
        return FrameScores(self.scores[picked], self.labels[picked], [self.video_ids[i] for i in picked],
                           [self.datasets[i] for i in picked], [self.methods[i] for i in picked])


@dataclass(frozen=True)
class ListedVideo:
    """A video of the split as videos.parquet lists it (with or without faces)."""

    label: int
    method: str = ""
    family_id: str = ""


def pick_device(name: str = "auto") -> Any:
    """'auto' → CUDA when available, else CPU; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _checkpoint_file(path: str | os.PathLike[str]) -> Any:
    """A local path as is; a URI (s3://…) read through pyarrow.fs into memory (torch.load takes a file object)."""
    text = str(path)
    if "://" not in text:
        return path
    folder, _, name = text.partition("?")[0].rpartition("/")
    query = text.partition("?")[2]
    return io.BytesIO(Storage(f"{folder}?{query}" if query else folder).read_bytes(name))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A dfprep checkpoint, loaded with weights_only=True (tensors and plain types only, never arbitrary pickles)."""
    try:
        payload = torch.load(_checkpoint_file(path), map_location="cpu", weights_only=True)
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
def score_frames(model: Any, loader: Any, device: Any, bar: Any = None) -> FrameScores:
    """Run the model over a loader of FaceShards batches; sigmoid of the fake logit per frame."""
    scores, labels, video_ids, datasets, methods = [], [], [], [], []
    use_amp = device.type == "cuda"
    for batch in loader:
        if bar is not None:
            bar.update(len(batch["label"]))
        images = batch["image"].to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=use_amp):
            logits = fake_logit(model(images))
        scores.append(torch.sigmoid(logits.float()).cpu().numpy())
        labels.append(batch["label"].numpy())
        video_ids += list(batch["video_id"])
        datasets += list(batch["dataset"])
        methods += list(batch["method"])
    if not scores:
        return FrameScores(np.zeros(0), np.zeros(0, np.int64), [], [], [])
    return FrameScores(np.concatenate(scores), np.concatenate(labels), video_ids, datasets, methods)


def listed_videos(out: str, split: str) -> dict[str, ListedVideo]:
    """Every video videos.parquet lists for the split, by video_id ({} when the table is absent)."""
    storage = Storage(out)
    if not storage.exists(VIDEOS_TABLE):
        return {}
    try:
        table = storage.read_table(VIDEOS_TABLE)
        columns = [c for c in ("video_id", "label", "split", "method", "family_id") if c in table.column_names]
        rows = table.select(columns).to_pylist()
    except (OSError, ValueError, KeyError) as exc:  # pyarrow's errors derive from these
        raise DfprepError(f"{storage.path(VIDEOS_TABLE)} is unreadable ({type(exc).__name__}); rerun the extract "
                          "command to rebuild it") from None
    return {row["video_id"]: ListedVideo(int(row["label"]), row.get("method") or "", row.get("family_id") or "")
            for row in rows if row["split"] == split}


def dataset_name(out: str, frames: FrameScores) -> str:
    """The dataset column: the samples' own dataset name, else the folder's name."""
    names = Counter(name for name in frames.datasets if name)
    return names.most_common(1)[0][0] if names else Path(out).name


def _finite(value: float) -> float | None:
    """NaN (metric undefined: one class only) as None, so JSON stays valid."""
    return None if math.isnan(value) else round(value, 6)


def score_table_row(out: str, frames: FrameScores, split: str, aggregate: str, faceless: str = "score",
                    listed: dict[str, ListedVideo] | None = None, name: str | None = None) -> dict[str, Any]:
    """One row: frame metrics, then video metrics with face-less videos at 0.5 (or dropped)."""
    if faceless not in FACELESS:
        raise ValueError(f"faceless must be one of {tuple(FACELESS)}, got {faceless!r}")
    listed = listed_videos(out, split) if listed is None else listed
    videos = video_scores(frames.video_ids, frames.labels, frames.scores, aggregate)
    missing = {vid: video.label for vid, video in listed.items() if vid not in videos}
    if faceless == "score":
        videos.update({video_id: (label, NO_FACE_SCORE) for video_id, label in missing.items()})
    video_labels = [label for label, _ in videos.values()]
    video_values = [score for _, score in videos.values()]
    return {
        "dataset": name or dataset_name(out, frames), "out": out, "split": split, "aggregate": aggregate,
        "frames": int(frames.scores.size), "videos": len(videos),
        "frame_auc": _finite(auc(frames.labels, frames.scores)),
        "video_auc": _finite(auc(video_labels, video_values)),
        "ap": _finite(average_precision(frames.labels, frames.scores)),
        "acc": _finite(accuracy(frames.labels, frames.scores)), "eer": _finite(eer(frames.labels, frames.scores)),
        "video_ap": _finite(average_precision(video_labels, video_values)),
        "video_acc": _finite(accuracy(video_labels, video_values)),
        "video_eer": _finite(eer(video_labels, video_values)),
        "videos_without_faces": len(missing), "faceless": FACELESS[faceless],
    }


def score_rows(out: str, frames: FrameScores, split: str, aggregate: str, faceless: str = "score",
               per_method: bool = True) -> list[dict[str, Any]]:
    """One OUT's rows: the pooled row, then (with several fake methods) one row per method."""
    listed = listed_videos(out, split)
    rows = [score_table_row(out, frames, split, aggregate, faceless, listed)]
    if not per_method or len(frames.methods) != frames.scores.size:
        return rows
    dataset = rows[0]["dataset"]
    for method, (frame_keep, videos) in method_subsets(frames, listed).items():
        name = FFPP_METHOD_ROWS.get(method, method) if dataset == "ffpp" else f"{dataset}/{method}"
        rows.append(score_table_row(out, frames.subset(frame_keep), split, aggregate, faceless, videos, name))
    return rows


def method_subsets(frames: FrameScores,
                   listed: dict[str, ListedVideo]) -> dict[str, tuple[np.ndarray, dict[str, ListedVideo]]]:
    """fake method → (its frames and its originals' frames, the same as listed videos); {} with one method.

    A method's originals are the real videos of the methods its fakes derive from (their family_id's
    method: FF++ youtube, DeepFakeDetection actors), else every real video of the split.
    """
    pairs = {(v.method, v.label) for v in listed.values()}
    pairs |= set(zip(frames.methods, np.asarray(frames.labels).tolist()))
    fake_methods = sorted({m for m, y in pairs if y == 1} - {m for m, y in pairs if y == 0})  # methods of fakes only
    if len(fake_methods) < 2:
        return {}
    methods, labels = np.array(frames.methods, dtype=object), np.asarray(frames.labels)
    subsets = {}
    for method in fake_methods:
        sources = {listed[v.family_id].method for v in listed.values()
                   if v.label == 1 and v.method == method and v.family_id in listed and listed[v.family_id].label == 0}
        frame_keep = np.array([_in_subset(y, m, method, sources) for m, y in zip(methods, labels)], bool)
        videos = {vid: v for vid, v in listed.items() if _in_subset(v.label, v.method, method, sources)}
        subsets[method] = (frame_keep, videos)
    return subsets


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


def _in_subset(label: int, method: str, fake_method: str, sources: set[str]) -> bool:
    """A fake of `fake_method`, or a real of one of its source methods (any real when none is known)."""
    return method == fake_method if label == 1 else (not sources or method in sources)


def evaluate(checkpoint: str | os.PathLike[str], out_dirs: Sequence[str], split: str = "test", batch_size: int = 64,
             aggregate: str = "mean", workers: int = 0, device: str = "auto",
             json_path: str | os.PathLike[str] | None = None, skip_bad_shards: bool = False,
             model: str | None = None, allow_incomplete: bool = False, faceless: str = "score",
             per_method: bool = True, progress: bool = False) -> list[dict[str, Any]]:
    """Score one checkpoint on every OUT folder: a pooled row per OUT, plus per-method rows (optionally as JSON).

    An incomplete or damaged OUT is refused unless `allow_incomplete`; `model` names the factory to trust
    when the checkpoint records a `package.module:factory` instead of a registered model.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if faceless not in FACELESS:
        raise ValueError(f"faceless must be one of {tuple(FACELESS)}, got {faceless!r}")
    require_outputs(out_dirs, allow_incomplete)
    require_split(out_dirs, split)
    target = pick_device(device)
    network, payload = load_detector(checkpoint, target, model)
    rows = []
    for out in out_dirs:
        loader = frame_loader(str(out), split, payload["config"], batch_size, workers,
                              skip_bad_shards=skip_bad_shards)
        with scoring_bar(loader, out, progress) as bar:
            frames = score_frames(network, loader, target, bar)
        rows += score_rows(str(out), frames, split, aggregate, faceless, per_method)
    if json_path is not None and str(json_path) != "-":  # "-": the command prints the JSON on stdout
        Path(json_path).write_text(json.dumps({"checkpoint": str(checkpoint), "rows": rows}, indent=1) + "\n")
    return rows


def scoring_bar(loader: Any, out: str, progress: bool) -> Any:
    """A tqdm bar over the faces of one OUT (off with progress=False, TQDM_DISABLE, or when not on a terminal)."""
    from tqdm import tqdm

    from dfprep.config.console import bar_disable

    return tqdm(total=loader.dataset.estimated_length() or None, unit="face", desc=f"evaluate {Path(out).name}",
                disable=bar_disable(not progress), dynamic_ncols=True)


def known_splits(out: str) -> set[str]:
    """The splits an OUT holds: in its shard names, and in videos.parquet (a split may have only faceless videos)."""
    storage = Storage(out)
    splits = {shard_split(name[:-4]) for name in storage.listdir() if name.endswith(".tar")}
    if storage.exists(VIDEOS_TABLE):
        try:
            splits |= set(storage.read_table(VIDEOS_TABLE).column("split").to_pylist())
        except (OSError, ValueError, KeyError):  # unreadable: listed_videos reports it with the rerun hint
            pass
    return {split for split in splits if split}


def require_split(out_dirs: Sequence[str], split: str) -> None:
    """Refuse a split no OUT has: a typo would otherwise score nothing and print an empty row."""
    known = set().union(*(known_splits(str(out)) for out in out_dirs))
    if split not in known:
        raise DfprepError(f"no split {split!r} in {', '.join(map(str, out_dirs))} "
                          f"(its splits: {', '.join(sorted(known)) or 'none'})")


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
