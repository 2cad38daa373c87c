"""FaceShards: stream dfprep shards (plus companion maps) into PyTorch, split over DataLoader workers and DDP ranks.

Pipeline per reader (one reader = one DataLoader worker of one rank), each stage a small generator:
epoch shard order → this reader's shards → raw samples (safe members only, integrity checked, maps joined)
→ filter → class balance → shuffle buffer → decode → transform. Shards are dealt round-robin over all
``world_size × num_workers`` readers, so every sample is read exactly once per epoch. Ranks can receive
unequal sample counts when shards differ in size; with DDP, cap the steps per epoch (or use shards of one
size) so that no rank waits for a batch that never comes.
"""

from __future__ import annotations

import io
import json
import os
import random
import warnings
from collections import Counter
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
from webdataset.filters import shuffle as shuffle_stage

from dfprep.torch._require import require_torch
from dfprep.torch.shardio import RawSample, ShardError, read_shard
from dfprep.torch.shardlist import (SampleFilter, ShardListError, ShardSource, map_shard, resolve_shards,
                                    select_shards)
from dfprep.torch.transforms import apply_transform

torch = require_torch()

IMAGE_TYPES = ("jpg", "jpeg", "png", "webp")
BALANCE_MODES = ("over", "under")
Sample = dict[str, Any]


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from (seed, epoch, reader, stream) so streams never correlate."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def distributed_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's rank and the world size: explicit values, else torch.distributed, else (0, 1)."""
    if rank is None and world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if rank is None or world_size is None or not 0 <= rank < world_size:
        raise ValueError(f"give both rank and world_size with 0 <= rank < world_size (got {rank}, {world_size})")
    return rank, world_size


def reader_slot(rank: int, world_size: int) -> tuple[int, int]:
    """This reader's index among all readers (ranks × DataLoader workers) and their number."""
    info = torch.utils.data.get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world_size * workers


def class_weights(counts: Counter[int], mode: str) -> dict[int, float]:
    """Expected copies per sample of each label so real:fake ≈ 1:1 (oversample minority / undersample majority)."""
    real, fake = counts.get(0, 0), counts.get(1, 0)
    if real == 0 or fake == 0:
        raise ShardListError(f"cannot balance classes: the selected samples hold {real} real and {fake} fake")
    minority, majority = (0, 1) if real < fake else (1, 0)
    ratio = max(real, fake) / min(real, fake)
    if mode == "over":
        return {minority: ratio, majority: 1.0}
    return {minority: 1.0, majority: 1.0 / ratio}


def balanced(samples: Iterator[RawSample], weights: dict[int, float], rng: random.Random) -> Iterator[RawSample]:
    """Repeat or drop samples by their label's weight (whole part always, fraction by chance)."""
    for sample in samples:
        weight = weights.get(int(sample.meta["label"]), 1.0)
        copies = int(weight) + (rng.random() < weight - int(weight))
        for _ in range(copies):
            yield sample


def with_meta(samples: Iterator[RawSample]) -> Iterator[RawSample]:
    """Parse each sample's json member (label, video_id, …): every sample must have one."""
    for sample in samples:
        if "json" not in sample.members:
            raise ShardError(f"{sample.shard}: sample {sample.key!r} has no .json member (label unknown)")
        try:
            sample.meta = json.loads(sample.members["json"])
        except ValueError as exc:
            raise ShardError(f"{sample.shard}: sample {sample.key!r} has invalid json ({exc})") from exc
        if sample.meta.get("label") not in (0, 1):
            raise ShardError(f"{sample.shard}: sample {sample.key!r} has label {sample.meta.get('label')!r}, "
                             "expected 0 (real) or 1 (fake)")
        yield sample


def decode_rgb(sample: RawSample, extension: str) -> np.ndarray:
    """An image member as an HWC uint8 RGB view (OpenCV decodes BGR; the view swaps without copying)."""
    array = cv2.imdecode(np.frombuffer(sample.members[extension], np.uint8), cv2.IMREAD_COLOR)
    if array is None:
        raise ShardError(f"{sample.shard}: cannot decode {sample.key}.{extension}")
    return array[:, :, ::-1]


def image_tensor(rgb: np.ndarray) -> Any:
    """HWC uint8 → CHW float32 in [0, 1]: channel swap, transpose, conversion and scaling in one pass."""
    height, width, channels = rgb.shape
    chw = np.empty((channels, height, width), np.float32)
    np.multiply(rgb.transpose(2, 0, 1), np.float32(1 / 255), out=chw)
    return torch.from_numpy(chw)


def decode_map(sample: RawSample) -> Any:
    """The companion map as (H, W) float32 in [0, 1] (8-bit grayscale value / 255, or 16-bit value / 65535)."""
    array = cv2.imdecode(np.frombuffer(sample.members["map"], np.uint8), cv2.IMREAD_ANYDEPTH)
    if array is None or array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ShardError(f"{sample.shard}: cannot decode the map of {sample.key} (expected 8- or 16-bit grayscale)")
    return torch.from_numpy(array.astype(np.float32)).div_(255 if array.dtype == np.uint8 else 65535)


_NPY_LAYOUTS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}
_NPY_LAYOUT_CACHE_SIZE = 64


def npy_layout(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    """dtype, shape and Fortran order of an .npy header; parsed once per distinct header (they repeat)."""
    layout = _NPY_LAYOUTS.get(header)
    if layout is None:
        stream = io.BytesIO(header)
        version = np.lib.format.read_magic(stream)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(stream)
        layout = (dtype, tuple(shape), bool(fortran))
        if len(_NPY_LAYOUTS) < _NPY_LAYOUT_CACHE_SIZE:
            _NPY_LAYOUTS[header] = layout
    return layout


def load_plain_npy(payload: bytes) -> np.ndarray:
    """An .npy payload as an array, refusing object arrays: the equivalent of np.load(allow_pickle=False)."""
    if payload[:6] != b"\x93NUMPY" or len(payload) < 12:
        raise ValueError("not an .npy payload")
    wide = payload[6] >= 2  # format 2.0+ stores a 4-byte header length
    start = 12 + int.from_bytes(payload[8:12], "little") if wide else 10 + int.from_bytes(payload[8:10], "little")
    dtype, shape, fortran = npy_layout(payload[:start])
    if dtype.hasobject:
        raise ValueError("object arrays need pickle, which is never used")
    count = int(np.prod(shape))
    if len(payload) - start < count * dtype.itemsize:
        raise ValueError("payload shorter than its header says")
    return np.frombuffer(payload, dtype, count, start).reshape(shape, order="F" if fortran else "C")


def decode_landmarks(sample: RawSample) -> Any:
    """`<key>.ldm.npy` as an (N, 2) float32 tensor; never unpickles."""
    try:
        array = load_plain_npy(sample.members["ldm.npy"])
    except ValueError as exc:
        raise ShardError(f"{sample.shard}: {sample.key}.ldm.npy is not a plain array ({exc})") from exc
    if array.ndim != 2 or array.shape[1] != 2:
        raise ShardError(f"{sample.shard}: {sample.key}.ldm.npy has shape {array.shape}, expected (N, 2)")
    return torch.from_numpy(array.astype(np.float32))


def decode_sample(sample: RawSample) -> Sample:
    """The dict FaceShards yields: image, label, ids, and landmarks/map when the shard has them."""
    extension = next((e for e in IMAGE_TYPES if e in sample.members), None)
    if extension is None:
        raise ShardError(f"{sample.shard}: sample {sample.key!r} has no face image ({'/'.join(IMAGE_TYPES)})")
    meta = sample.meta
    decoded: Sample = {
        "image": image_tensor(decode_rgb(sample, extension)), "label": torch.tensor(int(meta["label"])),
        "key": sample.key, "video_id": str(meta.get("video_id", "")), "dataset": str(meta.get("dataset") or ""),
        "method": str(meta.get("method") or ""), "frame": int(meta.get("frame", -1)),
    }
    if "ldm.npy" in sample.members:
        decoded["landmarks"] = decode_landmarks(sample)
    if "map" in sample.members:
        decoded["map"] = decode_map(sample)
    return decoded


class FaceShards(torch.utils.data.IterableDataset):
    """dfprep shards as an IterableDataset of sample dicts (see the module docstring for the pipeline)."""

    def __init__(self, source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                 maps: str | None = None, split: str | Sequence[str] | None = None,
                 label: int | Sequence[int] | None = None, method: str | Sequence[str] | None = None,
                 dataset: str | Sequence[str] | None = None, shuffle: int = 0, seed: int = 0,
                 balance: bool | str = False, transform: Callable[..., Sample] | None = None,
                 rank: int | None = None, world_size: int | None = None, skip_bad_shards: bool = False):
        """Resolve and pre-filter the shard list once; `shuffle` is the buffer size (0: fixed order)."""
        super().__init__()
        self.filter = SampleFilter.of(split=split, label=label, method=method, dataset=dataset)
        self.balance = _balance_mode(balance)
        shards, self.label_counts = select_shards(resolve_shards(source), self.filter, need_counts=bool(self.balance))
        self.shards = [map_shard(shard, maps) for shard in shards] if maps else shards
        self.shuffle, self.seed, self.transform = shuffle, seed, transform
        self.weights = class_weights(self._counts_for_balance(), self.balance) if self.balance else None
        self.rank, self.world_size = rank, world_size
        self.skip_bad_shards = skip_bad_shards
        self.skipped_shards: list[str] = []  # counted per reader: DataLoader workers keep their own
        self.skipped_samples = 0
        self.epoch = 0

    def _counts_for_balance(self) -> Counter[int]:
        """Label counts over the selected samples, from the per-shard indexes."""
        if self.label_counts is None:
            raise ShardListError("balance needs every shard's parquet index (to know the real:fake ratio)")
        return self.label_counts

    def set_epoch(self, epoch: int) -> None:
        """Pick the seeded shard order and shuffles of the next iteration (persistent workers never see it)."""
        self.epoch = epoch

    def estimated_length(self) -> int | None:
        """Samples one epoch yields over all ranks (expected value when balancing); None without indexes."""
        if self.label_counts is None:
            return sum(s.samples or 0 for s in self.shards) if all(s.samples for s in self.shards) else None
        weights = self.weights or {}
        return round(sum(count * weights.get(lab, 1.0) for lab, count in self.label_counts.items()))

    def epoch_shards(self) -> list[ShardSource]:
        """The shard order of this epoch: seeded by (seed, epoch), identical on every rank and worker."""
        shards = list(self.shards)
        if self.shuffle:
            random.Random(derive_seed(self.seed, self.epoch)).shuffle(shards)
        return shards

    def _raw(self, shards: list[ShardSource]) -> Iterator[RawSample]:
        """Raw samples of these shards; with skip_bad_shards a bad shard is skipped with a warning."""
        for shard in shards:
            try:
                yield from with_meta(read_shard(shard))
            except ShardError as exc:
                if not self.skip_bad_shards:
                    raise
                self.skipped_shards.append(shard.tar)
                warnings.warn(f"skipping bad shard ({len(self.skipped_shards)} skipped by this reader): {exc}",
                              stacklevel=2)

    def _decoded(self, samples: Iterator[RawSample], generator: Any) -> Iterator[Sample]:
        """Decode and transform; a payload that will not decode is skipped only with skip_bad_shards."""
        for raw in samples:
            try:
                sample = decode_sample(raw)
            except ShardError as exc:
                if not self.skip_bad_shards:
                    raise
                self.skipped_samples += 1
                warnings.warn(f"skipping undecodable sample ({self.skipped_samples} by this reader): {exc}",
                              stacklevel=2)
                continue
            yield apply_transform(self.transform, sample, generator) if self.transform else sample

    def __iter__(self) -> Iterator[Sample]:
        """This reader's share of one epoch."""
        reader, readers = reader_slot(*distributed_rank(self.rank, self.world_size))
        rng = random.Random(derive_seed(self.seed, self.epoch, reader, 1))
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, reader, 2))
        samples: Iterator[RawSample] = (s for s in self._raw(self.epoch_shards()[reader::readers])
                                        if self.filter.keeps(s.meta))
        if self.weights:
            samples = balanced(samples, self.weights, rng)
        if self.shuffle > 1:
            samples = shuffle_stage(self.shuffle, self.shuffle, rng=rng)(samples)
        return self._decoded(samples, generator)


def _balance_mode(balance: bool | str) -> str | None:
    """balance=True means oversampling the minority class; 'over'/'under' pick explicitly."""
    if balance is False or balance is None:
        return None
    mode = "over" if balance is True else balance
    if mode not in BALANCE_MODES:
        raise ValueError(f"balance must be True, False, 'over' or 'under', got {balance!r}")
    return mode
