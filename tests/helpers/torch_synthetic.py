"""Synthetic OUT folders (shards, indexes, videos.parquet, map shards) for tests, benchmarks and demos.

Fakes carry a high-frequency stripe patch over the lower face that real faces lack, so a tiny model can
learn the task in a few steps. Written with the same ShardWriter as `dfprep extract`, so the layout is
the real contract. Needs only numpy/OpenCV/pyarrow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from dfprep.io.keys import sample_key
from dfprep.io.shards import Sample, ShardWriter, encode_image, encode_npy
from dfprep.io.storage import Storage


@dataclass(frozen=True)
class SyntheticSpec:
    """What to write: videos per split as (real, fake), frames each, crop size, sharding and extras."""

    videos: dict[str, tuple[int, int]] = field(default_factory=lambda: {"train": (4, 4), "test": (2, 2)})
    frames: int = 4
    size: int = 64
    videos_per_shard: int = 4
    image_format: str = "jpg"
    quality: int = 95
    dataset: str = "synthetic"
    maps: str | None = None  # also write companion map shards under maps/<name>/
    videos_without_faces: int = 0  # extra test-split videos recorded as no_face (no samples)
    seed: int = 0


def template_landmarks_68(size: int) -> np.ndarray:
    """A frontal 68-point layout (jaw, brows, nose, eyes, lips) in crop pixels for a size×size face."""
    unit = np.zeros((68, 2), np.float64)
    angles = np.linspace(np.pi * 0.95, np.pi * 0.05, 17)
    unit[0:17] = np.stack([0.5 - 0.4 * np.cos(angles), 0.45 + 0.45 * np.sin(angles)], 1)
    unit[17:22] = np.stack([np.linspace(0.2, 0.42, 5), np.full(5, 0.3)], 1)
    unit[22:27] = np.stack([np.linspace(0.58, 0.8, 5), np.full(5, 0.3)], 1)
    unit[27:31] = np.stack([np.full(4, 0.5), np.linspace(0.4, 0.58, 4)], 1)
    unit[31:36] = np.stack([np.linspace(0.43, 0.57, 5), np.full(5, 0.62)], 1)
    eye = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    for first, centre in ((36, 0.33), (42, 0.67)):
        unit[first:first + 6] = np.stack([centre - 0.08 * np.cos(eye), 0.4 - 0.03 * np.sin(eye)], 1)
    outer = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    unit[48:60] = np.stack([0.5 - 0.15 * np.cos(outer), 0.76 - 0.06 * np.sin(outer)], 1)
    inner = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    unit[60:68] = np.stack([0.5 - 0.1 * np.cos(inner), 0.76 - 0.03 * np.sin(inner)], 1)
    return (unit * (size - 1)).astype(np.float32)


def synthetic_face(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB crop: a smooth random gradient, plus a stripe patch over the lower face when fake."""
    ramp = np.linspace(0.0, 1.0, size)
    base = rng.uniform(60, 190, 3)
    slope = rng.uniform(-50, 50, 3)
    image = base[None, None, :] + slope[None, None, :] * ramp[:, None, None] + rng.normal(0, 4, (size, size, 3))
    if label == 1:
        rows = slice(size // 2, size - size // 8)
        cols = slice(size // 4, size - size // 4)
        stripes = 45.0 * np.where((np.arange(size) // 2) % 2 == 0, 1.0, -1.0)
        image[rows, cols, :] += stripes[None, cols, None]
    return np.clip(image, 0, 255).astype(np.uint8)


def synthetic_map(size: int) -> np.ndarray:
    """An 8-bit primary-region map: a blob over the lower face (where the fakes' artefact sits)."""
    rows, cols = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    blob = np.exp(-(((rows - 0.7) / 0.18) ** 2 + ((cols - 0.5) / 0.25) ** 2))
    return np.round(blob * 255).astype(np.uint8)


def _video_rows(spec: SyntheticSpec) -> list[dict[str, Any]]:
    """One videos.parquet row per synthetic video, shards not yet assigned."""
    rows = []
    for split, (reals, fakes) in spec.videos.items():
        labels = [0] * reals + [1] * fakes
        order = sorted(range(reals + fakes),
                       key=lambda i: (i + 0.5) / reals if i < reals else (i - reals + 0.5) / fakes)
        for number, label in enumerate(labels[i] for i in order):  # classes interleaved, as in a real catalog
            method = "Fake" if label else "original"
            video_id = f"{spec.dataset}/{method}/raw/{split}_{number:03d}"
            rows.append({"video_id": video_id, "dataset": spec.dataset, "method": method, "split": split,
                         "label": label, "family_id": video_id, "status": "ok", "error": "",
                         "frames_planned": spec.frames, "faces_written": spec.frames, "shard": ""})
    for number in range(spec.videos_without_faces):
        video_id = f"{spec.dataset}/original/raw/noface_{number:03d}"
        rows.append({"video_id": video_id, "dataset": spec.dataset, "method": "original", "split": "test",
                     "label": number % 2, "family_id": video_id, "status": "no_face",
                     "error": "no face found", "frames_planned": spec.frames, "faces_written": 0, "shard": ""})
    return rows


def _face_sample(video: dict[str, Any], frame: int, spec: SyntheticSpec, rng: np.random.Generator) -> Sample:
    """One shard sample with the members and index row `dfprep extract` writes."""
    key = sample_key(video["video_id"], frame)
    meta = {"key": key, "label": video["label"], "video_id": video["video_id"], "dataset": spec.dataset,
            "method": video["method"], "split": video["split"], "family_id": video["family_id"], "frame": frame}
    landmarks = template_landmarks_68(spec.size) + rng.normal(0, 0.5, (68, 2)).astype(np.float32)
    members = {spec.image_format: encode_image(synthetic_face(video["label"], spec.size, rng), spec.image_format,
                                               spec.quality),
               "ldm.npy": encode_npy(landmarks.astype(np.float32)), "json": json.dumps(meta).encode()}
    row = {name: meta[name] for name in ("video_id", "dataset", "method", "split", "label", "family_id", "frame")}
    return Sample(key, members, row)


def _write_unit(storage: Storage, name: str, videos: list[dict[str, Any]], spec: SyntheticSpec,
                rng: np.random.Generator) -> None:
    """One committed unit (tar, parquet, stats) and, when asked, its companion map shard."""
    writer = ShardWriter(storage, name)
    maps = ShardWriter(Storage(f"{storage.root}/maps/{spec.maps}"), name) if spec.maps else None
    region_map = cv2.imencode(".png", synthetic_map(spec.size))[1].tobytes()
    for video in videos:
        video["shard"] = name
        for frame in range(spec.frames):
            sample = _face_sample(video, frame * 10, spec, rng)
            writer.add(sample)
            if maps is not None:
                maps.add(Sample(sample.key, {"prmap.png": region_map, "json": json.dumps({"key": sample.key}).encode()},
                                {"video_id": video["video_id"]}))
    writer.commit({"unit": name, "videos": videos})
    if maps is not None:
        maps.commit({"unit": name, "map": spec.maps})


def write_synthetic_out(folder: str, spec: SyntheticSpec = SyntheticSpec()) -> dict[str, int]:
    """Write a complete synthetic OUT folder; returns samples per split."""
    storage = Storage(folder)
    storage.makedirs()
    if spec.maps:
        storage.makedirs(f"maps/{spec.maps}")
    rng = np.random.default_rng(spec.seed)
    rows = _video_rows(spec)
    counts: dict[str, int] = {}
    shards: list[str] = []
    for split in spec.videos:
        with_faces = [r for r in rows if r["split"] == split and r["faces_written"]]
        for number, start in enumerate(range(0, len(with_faces), spec.videos_per_shard)):
            shards.append(f"{split}-{number:06d}")
            _write_unit(storage, shards[-1], with_faces[start:start + spec.videos_per_shard], spec, rng)
        counts[split] = len(with_faces) * spec.frames
    storage.write_table("videos.parquet", pa.Table.from_pylist(rows))
    storage.write_json("dataset.json", {"config": {"alignment": {"size": spec.size}}, "shards": shards,
                                        "complete": True, "videos": len(rows), "samples": sum(counts.values())})
    return counts
