"""Samples/s that FaceShards delivers through a DataLoader, and where each sample's time goes.

    python benchmarks/loader.py [--samples 2000] [--size 256] [--batch-size 64] [--out DIR]

Writes a synthetic OUT of jpg faces (with landmark maps) to a temporary folder (or reuses --out), then
times one full epoch for: decode only; the standard transforms (flip, colour jitter, normalise) with 0, 1
and 2 DataLoader workers; and the standard transforms plus primary-region erasing. Finally it times each
stage of one sample in-process (tar read, JPEG decode, tensor conversion, each transform, collation).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers: the synthetic OUT the tests use

from dfprep.torch.data import FaceShards, decode_landmarks, decode_map, decode_rgb, image_tensor, with_meta  # noqa: E402
from dfprep.torch.shardio import read_shard  # noqa: E402
from dfprep.torch.transforms import (ColorJitter, Compose, Normalize, PrimaryRegionErasing,  # noqa: E402
                                     RandomHorizontalFlip)
from tests.helpers.torch_synthetic import SyntheticSpec, write_synthetic_out  # noqa: E402

TARGET = 800.0  # samples/s at 256 px with 2 workers


def standard(erasing: bool = False) -> Compose:
    """The training-time transforms: flip, colour jitter, (erasing,) normalise."""
    steps: list[Any] = [RandomHorizontalFlip(0.5), ColorJitter(0.2, 0.2, 0.2)]
    if erasing:
        steps.append(PrimaryRegionErasing(p=0.5))
    return Compose(steps + [Normalize()], seed=0)


def ensure_out(folder: Path, samples: int, size: int) -> Path:
    """A synthetic OUT with about `samples` faces of size×size (10 shards), written once."""
    if not (folder / "videos.parquet").exists():
        frames = 40
        videos = max(2, samples // frames)
        spec = SyntheticSpec(videos={"train": (videos // 2, videos - videos // 2)}, frames=frames, size=size,
                             videos_per_shard=max(1, videos // 10), maps="landmarks")
        started = time.perf_counter()
        write_synthetic_out(str(folder), spec)
        print(f"wrote {videos * frames} samples of {size}px jpg in {time.perf_counter() - started:.1f} s "
              f"({sum(f.stat().st_size for f in folder.glob('*.tar')) / 1e6:.0f} MB of face shards)")
    return folder


def epoch_rate(dataset: FaceShards, workers: int, batch_size: int) -> tuple[float, int]:
    """Samples/s over one full epoch, worker start-up included."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    started, count = time.perf_counter(), 0
    for batch in loader:
        count += batch["image"].shape[0]
    return count / (time.perf_counter() - started), count


def loader_table(out: Path, batch_size: int, repeats: int = 3) -> None:
    """The samples/s table for each configuration: best and median of a few epochs (shared machines are noisy)."""
    configs: list[tuple[str, int, Callable[[], FaceShards]]] = [
        ("decode only", 0, lambda: FaceShards(out)),
        *[("standard transforms", w, lambda: FaceShards(out, shuffle=256, transform=standard())) for w in (0, 1, 2)],
        *[("standard + region erasing", w, lambda: FaceShards(out, shuffle=256, maps="landmarks",
                                                              transform=standard(erasing=True))) for w in (0, 2)],
    ]
    print(f"\n{'configuration':28s} {'workers':>7s} {'best/s':>8s} {'median/s':>9s}   (of {repeats} epochs)")
    for name, workers, make in configs:
        rates = sorted(epoch_rate(make(), workers, batch_size)[0] for _ in range(repeats))
        best, median = rates[-1], rates[len(rates) // 2]
        flag = "" if not (workers == 2 and name == "standard transforms") else \
            ("  target met" if median >= TARGET else f"  below the {TARGET:.0f}/s target")
        print(f"{name:28s} {workers:7d} {best:8.0f} {median:9.0f}{flag}")
    count = epoch_rate(configs[0][2](), 0, batch_size)[1]
    print(f"({count} samples per epoch, batch size {batch_size}, {os.cpu_count()} CPU cores, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}: other processes on "
          "the machine lower these figures)")


def timed(totals: dict[str, float], stage: str, function: Callable[[], Any]) -> Any:
    """Run one stage and add its wall time to the stage's total."""
    started = time.perf_counter()
    result = function()
    totals[stage] = totals.get(stage, 0.0) + time.perf_counter() - started
    return result


def stage_profile(out: Path, batch_size: int, limit: int = 600) -> None:
    """Per-sample milliseconds of each stage, single process, one thread (what one worker does)."""
    torch.set_num_threads(1)
    dataset = FaceShards(out, maps="landmarks")
    totals: dict[str, float] = {}
    generator = torch.Generator().manual_seed(0)
    transforms = [("flip", RandomHorizontalFlip(0.5)), ("colour jitter", ColorJitter()),
                  ("region erasing (p=0.5)", PrimaryRegionErasing(p=0.5)), ("normalise", Normalize())]
    raw_stream = (s for shard in dataset.shards for s in with_meta(read_shard(shard)))
    batch, count = [], 0
    while count < limit:
        raw = timed(totals, "tar read + json", lambda: next(raw_stream, None))
        if raw is None:
            break
        rgb = timed(totals, "jpeg decode (cv2)", lambda: decode_rgb(raw, "jpg"))
        sample = {"image": timed(totals, "to float CHW tensor", lambda: image_tensor(rgb)),
                  "label": torch.tensor(int(raw.meta["label"])), "key": raw.key}
        sample["landmarks"] = timed(totals, "landmarks npy", lambda: decode_landmarks(raw))
        sample["map"] = timed(totals, "map png decode", lambda: decode_map(raw))
        for name, transform in transforms:
            sample = timed(totals, name, lambda: transform(sample, generator))
        batch.append(sample)
        count += 1
        if len(batch) == batch_size:
            timed(totals, "collate (stack batch)", lambda: torch.utils.data.default_collate(batch))
            batch = []
    total = sum(totals.values())
    print(f"\nwhere one sample's time goes (single thread, {count} samples, {1000 * total / count:.2f} ms/sample "
          f"→ {count / total:.0f} samples/s per worker):")
    for stage, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {stage:26s} {1000 * seconds / count:7.3f} ms  {100 * seconds / total:5.1f} %")


def main() -> None:
    """Parse arguments, build or reuse the synthetic OUT, print both tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, help="Reuse (or create) the synthetic OUT here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dfprep-loader-") as scratch:
        out = ensure_out(args.out or Path(scratch) / "out", args.samples, args.size)
        loader_table(out, args.batch_size)
        stage_profile(out, args.batch_size)


if __name__ == "__main__":
    main()
