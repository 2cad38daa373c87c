"""The decode floor (plain threaded PyAV up to the last planned frame) and how close decode_frames gets.

    .venv/bin/python benchmarks/decode_floor.py [--root ../shared/data/ffpp-mini] [--frames 32] [--rounds 3]

`decode_floor` is reused by benchmarks/extract.py: extraction is judged as a ratio to it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import av

from dfprep.config import SamplingConfig
from dfprep.vision.video import VideoInfo, decode_frames, frame_plan, probe

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ffpp-mini"
# (skip_nonref, seek) settings of decode_frames compared against the floor.
VARIANTS = {"skip+seek": (True, True), "skip only": (True, False), "seek only": (False, True),
            "plain": (False, False)}


def decode_floor(paths_and_plans: Iterable[tuple[str | Path, Sequence[int]]], threads: int = 0) -> float:
    """Seconds plain threaded PyAV takes to decode each video up to its last planned frame, converting nothing
    (`threads` FFmpeg threads per video; 0: FFmpeg's choice)."""
    started = time.perf_counter()
    for path, plan in paths_and_plans:
        if not plan:
            continue
        last = max(plan)
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_type = "AUTO"
            stream.codec_context.thread_count = threads
            for index, _ in enumerate(container.decode(stream)):
                if index >= last:
                    break
    return time.perf_counter() - started


def decode_planned(jobs: Sequence[tuple[VideoInfo, Sequence[int]]], skip_nonref: bool = True,
                   seek: bool = True) -> float:
    """Seconds decode_frames takes to deliver every planned frame as an upright RGB array."""
    started = time.perf_counter()
    for info, plan in jobs:
        for _ in decode_frames(info.path, plan, info, skip_nonref=skip_nonref, seek=seek):
            pass
    return time.perf_counter() - started


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds (all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(jobs: Sequence[tuple[VideoInfo, list[int]]], rounds: int) -> dict[str, tuple[float, float]]:
    """Best-of-rounds wall and CPU seconds per method, interleaved video by video so load spikes hit all alike."""
    methods: dict[str, Callable[[VideoInfo, list[int]], object]] = {
        "decode floor": lambda info, plan: decode_floor([(info.path, plan)])}
    for name, (skip_nonref, seek) in VARIANTS.items():
        methods[f"decode_frames {name}"] = (
            lambda info, plan, s=skip_nonref, k=seek: decode_planned([(info, plan)], s, k))
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for _ in range(rounds):
        for position, (info, plan) in enumerate(jobs):
            for name, method in methods.items():
                wall, cpu = timed(lambda: method(info, plan))
                old = best.get((name, position), (float("inf"), float("inf")))
                best[(name, position)] = (min(old[0], wall), min(old[1], cpu))
    return {name: (sum(best[(name, i)][0] for i in range(len(jobs))),
                   sum(best[(name, i)][1] for i in range(len(jobs)))) for name in methods}


def report(title: str, jobs: Sequence[tuple[VideoInfo, list[int]]], rounds: int) -> None:
    """Print the floor, each decode_frames variant, and their ratios to the floor."""
    frames = sum(len(plan) for _, plan in jobs)
    results = measure(jobs, rounds)
    floor_wall, floor_cpu = results["decode floor"]
    print(f"\n{title}: {len(jobs)} videos, {frames} planned frames (best of {rounds} rounds per video)")
    print(f"  {'':26s} {'wall s':>8s} {'ratio':>6s} {'cpu s':>8s} {'ratio':>6s}")
    for name, (wall, cpu) in results.items():
        print(f"  {name:26s} {wall:8.3f} {wall / floor_wall:5.2f}x {cpu:8.3f} {cpu / floor_cpu:5.2f}x")


def main(argv: Sequence[str] | None = None) -> int:
    """Benchmark on the shared FF++ sample: uniform plans, then sparse plans where seeking matters."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    paths = sorted(args.root.glob("**/*.mp4"))
    if not paths:
        print(f"no videos under {args.root}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    infos = [probe(p) for p in paths]
    print(f"probe: {len(infos)} videos in {time.perf_counter() - started:.3f} s")
    for frames in (args.frames, 4):
        jobs = [(info, frame_plan(info, SamplingConfig(mode="uniform", frames=frames))) for info in infos]
        report(f"uniform {frames}", jobs, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
