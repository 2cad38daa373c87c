"""`dfprep leakage`: identities shared across splits or datasets, from the descriptors in videos.parquet."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from dfprep.io.layout import VIDEOS_TABLE
from dfprep.io.storage import Storage

DEFAULT_THRESHOLD = 0.6  # dlib's usual same-person distance


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
