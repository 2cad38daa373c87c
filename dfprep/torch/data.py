"""FaceShards: stream dfprep shards (plus companion maps) into PyTorch, split over DataLoader workers and DDP ranks.

Pipeline per reader (one reader = one DataLoader worker of one rank), each stage a small generator:
epoch shard order → this reader's shards → raw samples (safe members only, integrity checked, maps joined)
→ filter → class balance → shuffle buffer → decode (+ context crop, + registered original) → transform. Shards are dealt round-robin over all
``world_size × num_workers`` readers, so every sample is read exactly once per epoch. Ranks can receive
unequal sample counts when shards differ in size; with DDP, cap the steps per epoch (or use shards of one
size) so that no rank waits for a batch that never comes.
"""

from __future__ import annotations

import os
import random
import warnings
from collections import Counter
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
import pyarrow.parquet as pq
from webdataset.filters import shuffle as shuffle_stage

from dfprep.io.layout import READ_IMAGE_TYPES
from dfprep.io.payloads import (CRC_FIELD, DEFAULT_LIMITS, PayloadError, ReadLimits, crc_mismatch, decode_image,
                             load_json, load_landmarks)
from dfprep.io.payloads import load_plain_npy, npy_layout  # noqa: F401 - re-exported for existing callers
from dfprep.io.storage import resolve_uri
from dfprep.torch._require import require_torch
from dfprep.torch.shardio import RawSample, ShardError, read_shard
from dfprep.torch.shardlist import (SampleFilter, ShardListError, ShardSource, map_shard, resolve_shards,
                                    select_shards)
from dfprep.torch.transforms import apply_transform

torch = require_torch()

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


# Fields of `<key>.json` the consumer uses, and the types they must have (absent is fine except label).
META_TYPES: dict[str, tuple[type, ...]] = {"video_id": (str,), "dataset": (str, type(None)), "method": (str, type(None)),
                                           "split": (str, type(None)), "frame": (int,), CRC_FIELD: (dict,)}


def meta_problem(meta: Any) -> str | None:
    """Why a parsed json member cannot be used (not an object, a label other than 0/1, a field of the wrong type)."""
    if not isinstance(meta, dict):
        return f"json is a {type(meta).__name__}, expected an object"
    label = meta.get("label")
    if label not in (0, 1) or isinstance(label, bool):
        return f"label {str(label)[:40]!r}, expected 0 (real) or 1 (fake)"
    for name, types in META_TYPES.items():
        value = meta.get(name)
        if name in meta and (not isinstance(value, types) or isinstance(value, bool)):
            return f"json field {name!r} is {str(value)[:40]!r}, expected {' or '.join(t.__name__ for t in types)}"
    return None


def with_meta(samples: Iterator[RawSample], limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[RawSample]:
    """Parse and check each sample's json member (label, video_id, …): every sample must have a usable one."""
    for sample in samples:
        if "json" not in sample.members:
            raise ShardError(f"{sample.shard}: sample {sample.key!r} has no .json member (label unknown)")
        try:
            meta = load_json(sample.members["json"], limits)
        except PayloadError as exc:
            raise ShardError(f"{sample.shard}: sample {sample.key!r}: {exc}") from None
        problem = meta_problem(meta)
        if problem is not None:
            raise ShardError(f"{sample.shard}: sample {sample.key!r}: {problem}")
        sample.meta = meta
        yield sample


def check_crcs(sample: RawSample) -> None:
    """The sample's members must match the crc32s its json recorded (a flipped byte is a ShardError)."""
    members = {e: p for e, p in sample.members.items() if e not in ("json", "map")}
    problem = crc_mismatch(members, sample.meta.get(CRC_FIELD))
    if problem is not None:
        raise ShardError(f"{sample.shard}: sample {sample.key!r}: {problem}")


def decode_rgb(sample: RawSample, extension: str, limits: ReadLimits = DEFAULT_LIMITS) -> np.ndarray:
    """An image member as an HWC uint8 RGB view, its size checked from the header before decoding."""
    try:
        array = decode_image(sample.members[extension], cv2.IMREAD_COLOR, limits)
    except PayloadError as exc:
        raise ShardError(f"{sample.shard}: {sample.key}.{extension}: {exc}") from None
    return array[:, :, ::-1]


def image_tensor(rgb: np.ndarray) -> Any:
    """HWC uint8 → CHW float32 in [0, 1]: channel swap, transpose, conversion and scaling in one pass."""
    height, width, channels = rgb.shape
    chw = np.empty((channels, height, width), np.float32)
    np.multiply(rgb.transpose(2, 0, 1), np.float32(1 / 255), out=chw)
    return torch.from_numpy(chw)


def decode_map(sample: RawSample, limits: ReadLimits = DEFAULT_LIMITS) -> Any:
    """The companion map as (H, W) float32 in [0, 1] (8-bit grayscale value / 255, or 16-bit value / 65535)."""
    try:
        array = decode_image(sample.members["map"], cv2.IMREAD_ANYDEPTH, limits)
    except PayloadError as exc:
        raise ShardError(f"{sample.shard}: the map of {sample.key}: {exc}") from None
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ShardError(f"{sample.shard}: cannot decode the map of {sample.key} (expected 8- or 16-bit grayscale)")
    return torch.from_numpy(array.astype(np.float32)).div_(255 if array.dtype == np.uint8 else 65535)


def decode_landmarks(sample: RawSample, limits: ReadLimits = DEFAULT_LIMITS) -> Any:
    """`<key>.ldm.npy` as an (N, 2) float32 tensor; never unpickles."""
    try:
        return torch.from_numpy(load_landmarks(sample.members["ldm.npy"], limits))
    except PayloadError as exc:
        raise ShardError(f"{sample.shard}: {sample.key}.ldm.npy: {exc}") from None


def image_extension(sample: RawSample) -> str:
    """The face image's member type (jpg, png, …); every sample must have one."""
    extension = next((e for e in READ_IMAGE_TYPES if e in sample.members), None)
    if extension is None:
        raise ShardError(f"{sample.shard}: sample {sample.key!r} has no face image ({'/'.join(READ_IMAGE_TYPES)})")
    return extension


def crop_to_context(meta: dict[str, Any]) -> np.ndarray:
    """The 2x3 map from face-crop pixels to context-crop pixels, from the sample's two frame matrices."""
    face, wide = (np.vstack([np.asarray(meta[k], np.float64), [0.0, 0.0, 1.0]]) for k in ("matrix", "context_matrix"))
    return (wide @ np.linalg.inv(face))[:2]


def with_context(raw: RawSample, sample: Sample, limits: ReadLimits = DEFAULT_LIMITS) -> Sample:
    """Swap in the context crop: image, landmarks in its pixels, and where the face crop sits inside it."""
    member = f"context.{image_extension(raw)}"
    if member not in raw.members or "context_matrix" not in raw.meta:
        raise ShardError(f"{raw.shard}: sample {raw.key!r} has no context crop (extract with "
                         "alignment.context_scale >= 1, as the caddm recipes do)")
    to_context = crop_to_context(raw.meta)
    size = sample["image"].shape[-1]
    corners = np.array([[0.0, 0.0], [size, size]]) @ to_context[:, :2].T + to_context[:, 2]
    widened = {**sample, "image": image_tensor(decode_rgb(raw, member, limits)),
               "face_box": torch.tensor(corners.reshape(-1), dtype=torch.float32)}
    if sample.get("landmarks") is not None:
        points = sample["landmarks"].numpy().astype(np.float64)
        widened["landmarks"] = torch.from_numpy((points @ to_context[:, :2].T + to_context[:, 2]).astype(np.float32))
    return widened


def with_frame_geometry(raw: RawSample, sample: Sample, context: bool) -> Sample:
    """`frame_landmarks` (frame pixels) and `frame_matrix` (frame → the yielded image): CADDM's crop needs both."""
    key = "context_matrix" if context else "matrix"
    if "landmarks" not in raw.meta or key not in raw.meta:
        raise ShardError(f"{raw.shard}: sample {raw.key!r} has no frame landmarks or {key} in its json")
    return {**sample, "frame_landmarks": torch.tensor(raw.meta["landmarks"], dtype=torch.float32),
            "frame_matrix": torch.tensor(raw.meta[key], dtype=torch.float32)}


def with_original(raw: RawSample, sample: Sample, context: bool,
                  limits: ReadLimits = DEFAULT_LIMITS) -> Sample | None:
    """Add `original`: a fake's registered original (None when it has none); a real is its own original (CADDM)."""
    if int(raw.meta["label"]) == 0:
        return {**sample, "original": sample["image"].clone()}
    member = f"original{'_context' if context else ''}.{image_extension(raw)}"
    if member not in raw.members:
        return None
    return {**sample, "original": image_tensor(decode_rgb(raw, member, limits))}


def index_unpaired_fakes(shards: Sequence[ShardSource], wanted: SampleFilter) -> int | None:
    """Fakes without a registered original among the selected samples (from the indexes; None without them)."""
    total = 0
    for shard in shards:
        if shard.index is None:
            return None
        filesystem, path = resolve_uri(shard.index)
        if "has_original" not in pq.read_schema(path, filesystem=filesystem).names:
            raise ShardListError(f"{shard.index}: no has_original column; pairs=True needs shards extracted with "
                                 "output.registered_original: true (the caddm recipes)")
        columns = ["label", "has_original", *[f for f in wanted.active() if f != "label"]]
        table = pq.read_table(path, columns=columns, filesystem=filesystem).to_pylist()
        total += sum(1 for row in table if row["label"] == 1 and not row["has_original"] and wanted.keeps(row))
    return total


def decode_sample(sample: RawSample, limits: ReadLimits = DEFAULT_LIMITS) -> Sample:
    """The dict FaceShards yields: image, label, ids, and landmarks/map when the shard has them."""
    extension = image_extension(sample)
    check_crcs(sample)
    meta = sample.meta
    decoded: Sample = {
        "image": image_tensor(decode_rgb(sample, extension, limits)), "label": torch.tensor(int(meta["label"])),
        "key": sample.key, "video_id": str(meta.get("video_id", "")), "dataset": str(meta.get("dataset") or ""),
        "method": str(meta.get("method") or ""), "frame": int(meta.get("frame", -1)),
    }
    if "ldm.npy" in sample.members:
        decoded["landmarks"] = decode_landmarks(sample, limits)
    if "map" in sample.members:
        decoded["map"] = decode_map(sample, limits)
    return decoded


def sample_shapes(decoded: Sample) -> tuple[tuple[int, ...], ...]:
    """Image, landmark and map shapes: every sample of one stream must share them, or no batch can hold them."""
    return tuple(tuple(decoded[name].shape) if name in decoded else () for name in ("image", "landmarks", "map"))


def shapes_problem(first: tuple[tuple[int, ...], ...], shapes: tuple[tuple[int, ...], ...]) -> str | None:
    """How a sample's shapes differ from the stream's first sample (and a map from its own image), or None."""
    if shapes[2] and shapes[2] != shapes[0][1:]:
        return f"map of shape {shapes[2]} does not cover its {shapes[0][1]}x{shapes[0][2]} image"
    for name, found, expected in zip(("image", "landmarks", "map"), shapes, first):
        if found != expected:
            return f"{name} of shape {found}, but earlier samples of this stream have {expected}"
    return None


class FaceShards(torch.utils.data.IterableDataset):
    """dfprep shards as an IterableDataset of sample dicts (see the module docstring for the pipeline)."""

    def __init__(self, source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                 maps: str | None = None, split: str | Sequence[str] | None = None,
                 label: int | Sequence[int] | None = None, method: str | Sequence[str] | None = None,
                 dataset: str | Sequence[str] | None = None, shuffle: int = 0, seed: int = 0,
                 balance: bool | str = False, transform: Callable[..., Sample] | None = None,
                 rank: int | None = None, world_size: int | None = None, skip_bad_shards: bool = False,
                 limits: ReadLimits = DEFAULT_LIMITS, pairs: bool = False, context: bool = False):
        """Resolve and pre-filter the shard list once; `shuffle` is the buffer size (0: fixed order).

        `limits` bounds what one member may cost (bytes, image pixels from its header, json size); a member
        over them is a ShardError naming shard and key, like any other damage (see dfprep.io.payloads).
        """
        super().__init__()
        self.filter = SampleFilter.of(split=split, label=label, method=method, dataset=dataset)
        self.balance = _balance_mode(balance)
        shards, self.label_counts = select_shards(resolve_shards(source), self.filter, need_counts=bool(self.balance))
        self.shards = [map_shard(shard, maps) for shard in shards] if maps else shards
        self.pairs, self.context = pairs, context
        self.unpaired_fakes = index_unpaired_fakes(self.shards, self.filter) if pairs else 0  # skipped when read
        if self.unpaired_fakes and self.label_counts is not None:
            self.label_counts = self.label_counts - Counter({1: self.unpaired_fakes})
        self.shuffle, self.seed, self.transform = shuffle, seed, transform
        self.weights = class_weights(self._counts_for_balance(), self.balance) if self.balance else None
        self.rank, self.world_size = rank, world_size
        self.skip_bad_shards, self.limits = skip_bad_shards, limits
        self.skipped_shards: list[str] = []  # counted per reader: DataLoader workers keep their own
        self.skipped_samples = 0
        self.skipped_unpaired = 0  # fakes without a registered original this reader skipped (pairs=True)
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
                yield from with_meta(read_shard(shard, self.limits), self.limits)
            except ShardError as exc:
                if not self.skip_bad_shards:
                    raise
                self.skipped_shards.append(shard.tar)
                warnings.warn(f"skipping bad shard ({len(self.skipped_shards)} skipped by this reader): {exc}",
                              stacklevel=2)

    def _decoded(self, samples: Iterator[RawSample], generator: Any) -> Iterator[Sample]:
        """Decode, check and transform; a damaged or odd-shaped sample is skipped only with skip_bad_shards.

        Every sample of one reader must have the first one's image, landmark and map shapes: a batch
        cannot hold anything else, and a hostile sample must not surface as a collate error.
        """
        first: tuple[tuple[int, ...], ...] | None = None
        for raw in samples:
            try:
                sample = self._decode_one(raw)
                if sample is not None:
                    first = first or sample_shapes(sample)
                    problem = shapes_problem(first, sample_shapes(sample))
                    if problem is not None:
                        raise ShardError(f"{raw.shard}: sample {raw.key!r}: {problem}")
            except ShardError as exc:
                if not self.skip_bad_shards:
                    raise
                self.skipped_samples += 1
                warnings.warn(f"skipping bad sample ({self.skipped_samples} by this reader): {exc}",
                              stacklevel=2)
                continue
            if sample is None:
                self._skip_unpaired(raw)
                continue
            yield apply_transform(self.transform, sample, generator) if self.transform else sample

    def _decode_one(self, raw: RawSample) -> Sample | None:
        """One sample's dict, with its context crop and original as asked; None for a fake without its original."""
        sample = decode_sample(raw, self.limits)
        if not (self.context or self.pairs):
            return sample
        sample = with_frame_geometry(raw, sample, self.context)
        if self.context:
            sample = with_context(raw, sample, self.limits)
        return with_original(raw, sample, self.context, self.limits) if self.pairs else sample

    def _skip_unpaired(self, raw: RawSample) -> None:
        """Count a fake streamed without its original; warn once per reader (the index count is the total)."""
        self.skipped_unpaired += 1
        if self.skipped_unpaired == 1:
            total = "" if self.unpaired_fakes is None else f" ({self.unpaired_fakes} such fakes in the selection)"
            warnings.warn(f"pairs=True skips fakes without a registered original{total}, e.g. {raw.key} "
                          f"({raw.meta.get('original_missing') or 'no original member'})", stacklevel=3)

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
