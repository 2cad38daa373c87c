"""Face identity: dlib's 128-D descriptor per face track, median per video, and leakage across splits."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from dfprep.vision.faces import Face

DEFAULT_THRESHOLD = 0.6  # dlib's usual same-person distance


class IdentityCollector:
    """Computes a few descriptors per track while a video is extracted, then aggregates them by median."""

    def __init__(self, descriptor_path: Path, per_track: int):
        import dlib

        self._dlib = dlib
        self.model = dlib.face_recognition_model_v1(str(descriptor_path))
        self.per_track = max(1, per_track)
        self.reset(1)

    def reset(self, planned_frames: int) -> None:
        """New video: forget descriptors; sample every k-th face of a track so they spread over the video."""
        self.every = max(1, planned_frames // self.per_track)
        self.seen: dict[int, int] = defaultdict(int)
        self.descriptors: dict[int, list[np.ndarray]] = defaultdict(list)

    def observe(self, image: np.ndarray, face: Face) -> None:
        """Maybe compute this face's descriptor (the first face of a track, then every k-th)."""
        count = self.seen[face.track_id]
        self.seen[face.track_id] += 1
        if count % self.every or len(self.descriptors[face.track_id]) >= self.per_track:
            return
        dlib = self._dlib
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        points = [dlib.point(int(round(x)), int(round(y))) for x, y in face.landmarks]
        shape = dlib.full_object_detection(dlib.rectangle(x0, y0, x1, y1), points)
        self.descriptors[face.track_id].append(np.asarray(self.model.compute_face_descriptor(image, shape)))

    def video_identity(self) -> tuple[list[float] | None, int]:
        """Median descriptor of the track seen most often, and how many descriptors it rests on."""
        if not self.descriptors:
            return None, 0
        track = max(self.descriptors, key=lambda t: (self.seen[t], -t))
        stack = np.stack(self.descriptors[track])
        return np.median(stack, axis=0).astype(float).round(6).tolist(), len(stack)


@dataclass(frozen=True)
class IdentityVideo:
    """One video's identity as read back from an output's videos.parquet."""

    output: str
    video_id: str
    dataset: str
    split: str
    label: int
    descriptor: np.ndarray


@dataclass
class Leak:
    """A cluster of one identity whose videos sit in more than one split or dataset."""

    videos: list[IdentityVideo]
    splits: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for --json and the report."""
        return {"splits": self.splits, "datasets": self.datasets,
                "videos": [{"output": v.output, "video_id": v.video_id, "split": v.split, "label": v.label}
                           for v in self.videos]}


def load_identities(outputs: Iterable[str]) -> tuple[list[IdentityVideo], int]:
    """Videos with a descriptor from each output's videos.parquet; also counts those without one."""
    from dfprep.runner.run import VIDEOS_TABLE
    from dfprep.io.shards import Storage

    videos, without = [], 0
    for output in outputs:
        storage = Storage(output)
        table = storage.read_table(VIDEOS_TABLE) if storage.exists(VIDEOS_TABLE) else None
        rows = table.to_pylist() if table is not None else []
        for row in rows:
            if row.get("identity"):
                videos.append(IdentityVideo(output, row["video_id"], row["dataset"], row["split"], row["label"],
                                            np.asarray(row["identity"], np.float32)))
            else:
                without += 1
    return videos, without


def cluster_identities(descriptors: np.ndarray, threshold: float, chunk: int = 2048) -> np.ndarray:
    """Connected components of the 'closer than threshold' graph (union-find, chunked distance blocks)."""
    count = len(descriptors)
    parent = np.arange(count)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, count, chunk):
        block = descriptors[start:start + chunk]
        distances = np.linalg.norm(block[:, None, :] - descriptors[None, :, :], axis=2)
        for a, b in zip(*np.nonzero(distances < threshold)):
            i, j = root(start + int(a)), root(int(b))
            if i != j:
                parent[max(i, j)] = min(i, j)
    return np.array([root(i) for i in range(count)])


def find_leaks(videos: Sequence[IdentityVideo], threshold: float = DEFAULT_THRESHOLD) -> list[Leak]:
    """Identities shared across splits (train↔test, …) or across datasets/outputs."""
    if not videos:
        return []
    labels = cluster_identities(np.stack([v.descriptor for v in videos]), threshold)
    groups: dict[int, list[IdentityVideo]] = defaultdict(list)
    for video, label in zip(videos, labels):
        groups[int(label)].append(video)
    leaks = []
    for members in groups.values():
        splits = sorted({v.split for v in members})
        datasets = sorted({f"{v.dataset}@{v.output}" for v in members})
        if len(splits) > 1 or len(datasets) > 1:
            leaks.append(Leak(sorted(members, key=lambda v: (v.split, v.video_id)), splits, datasets))
    return sorted(leaks, key=lambda leak: -len(leak.videos))


def format_leaks(leaks: list[Leak], checked: int, without: int, threshold: float) -> str:
    """Human report: one block per shared identity, with the video ids involved."""
    lines = [f"identity leakage: {checked} videos with a descriptor ({without} without), threshold {threshold}"]
    if not leaks:
        lines.append("  no identity is shared across splits or datasets")
    for number, leak in enumerate(leaks, 1):
        lines.append(f"  identity #{number}: {len(leak.videos)} videos across splits {', '.join(leak.splits)}"
                     + (f" and datasets {', '.join(leak.datasets)}" if len(leak.datasets) > 1 else ""))
        lines += [f"    {v.split:10s} {'fake' if v.label else 'real'}  {v.video_id}" for v in leak.videos[:20]]
        if len(leak.videos) > 20:
            lines.append(f"    … {len(leak.videos) - 20} more")
    return "\n".join(lines)
