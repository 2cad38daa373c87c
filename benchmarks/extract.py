"""Extraction speed against the decode floor, memory on long videos, and Ray scaling.

    .venv/bin/python benchmarks/extract.py [--root ../shared/data/ffpp-mini] [--skip-memory] [--skip-scaling]

Prints ratios; asserts nothing. The decode floor is the time plain threaded PyAV needs to decode the same
videos up to their last planned frame, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_floor import DEFAULT_ROOT, decode_floor  # noqa: E402

from dfprep.catalog import scan  # noqa: E402
from dfprep.config import PipelineConfig, load_config  # noqa: E402
from dfprep.jobs.extract import ExtractionModels, VideoExtractor  # noqa: E402
from dfprep.runner.run import extract_run  # noqa: E402
from dfprep.vision.video import frame_plan, probe  # noqa: E402


def floor_vs_dfprep(root: Path, config: PipelineConfig) -> None:
    """In-process extraction of every video vs the decode floor, with a per-stage breakdown."""
    records = list(scan("ffpp", root, config.dataset))
    plans = [(r.path, frame_plan(probe(r.path), config.sampling)) for r in records]
    floor = min(decode_floor(plans) for _ in range(2))
    started = time.perf_counter()
    extractor = VideoExtractor(config, ExtractionModels.resolve(config))
    load = time.perf_counter() - started
    originals = {r.video_id: r.path for r in records}
    timings: Counter[str] = Counter()
    faces = 0
    started = time.perf_counter()
    for record in records:
        result = extractor.extract(record, originals.get(record.family_id), lambda sample: None)
        faces += result.row["faces_written"]
        timings.update(result.timings)
    wall = time.perf_counter() - started
    planned = sum(len(p) for _, p in plans)
    print(f"\n== floor vs dfprep (in-process, {len(records)} videos, {config.sampling.frames} frames, "
          f"{config.alignment.preset}) ==")
    print(f"  decode floor   {floor:7.2f} s   (threaded PyAV up to the last planned frame)")
    print(f"  dfprep         {wall:7.2f} s   ratio {wall / floor:.2f}x   faces {faces}/{planned}"
          f"   (+ {load:.2f} s model load, once per worker)")
    total = sum(timings.values())
    print("  stages: " + ", ".join(f"{k} {v:.2f}s ({v / total:.0%})" for k, v in timings.most_common()))


def peak_rss_mb(video: Path, frames: int) -> float:
    """Peak RSS of a fresh process extracting `frames` faces from one video."""
    code = (
        "import sys\n"
        "from dfprep.catalog.base import VideoRecord\n"
        "from dfprep.config import load_config\n"
        "from dfprep.jobs.extract import ExtractionModels, VideoExtractor\n"
        f"c = load_config(None, {{'sampling.frames': {frames}}})\n"
        "x = VideoExtractor(c, ExtractionModels.resolve(c))\n"
        f"r = VideoRecord('b/real/raw/long', {str(video)!r}, 'b', 'real', 'raw', 'test', 0, 'b/real/raw/long')\n"
        "row = x.extract(r, None, lambda s: None).row\n"
        "peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "print(row['status'], row['faces_written'], peak / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    print(f"    {video.name}: status {out[0]}, faces {out[1]}, peak RSS {float(out[2]):.0f} MB")
    return float(out[2])


def memory_flat(workdir: Path) -> None:
    """Peak memory extracting 32 frames from a 10 s and a 3 min 1080p clip: it must not grow."""
    from dfprep.cli.democlips import FacePlacement, linear_motion, write_clip

    print("\n== memory vs video length (1080p, 32 frames) ==")
    motion = linear_motion(FacePlacement(200, 150, 2.0), FacePlacement(1300, 500, 2.0))
    clips = []
    for seconds in (10, 180):
        path = workdir / f"long_{seconds}s.mp4"
        started = time.perf_counter()
        write_clip(path, 1920, 1080, seconds * 25, motion, fps=25, gop=250, crf=28)
        print(f"    generated {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.0f} s")
        clips.append(path)
    short, long = (peak_rss_mb(c, 32) for c in clips)
    print(f"  peak RSS: 10 s clip {short:.0f} MB, 3 min clip {long:.0f} MB (ratio {long / short:.2f})")


def duplicated_dataset(root: Path, workdir: Path, copies: int) -> Path:
    """ffpp-mini's videos linked `copies` times into a folder-adapter tree (≥ 28 videos)."""
    target = workdir / "dup"
    for record in scan("ffpp", root):
        label = "fake" if record.label else "real"
        for copy in range(copies):
            link = target / label / f"{record.method}_{Path(record.path).stem}_{copy}.mp4"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(record.path, link)
    return target


def scaling(root: Path, workdir: Path) -> None:
    """Throughput in-process, with 1 and 2 Ray workers, on ffpp-mini duplicated to 28 videos."""
    import ray

    dataset = duplicated_dataset(root, workdir, 4)
    print("\n== scaling (28 videos, 32 frames, default settings) ==")
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"  Ray cluster start-up (once per machine/session, not per run): {time.perf_counter() - started:.2f} s")
    results = {}
    for workers in (0, 1, 2):
        config = load_config(None, {"ray.workers": workers, "output.videos_per_shard": 2})
        out = workdir / f"scale_{workers}"
        report = extract_run(scan("folder", dataset, config.dataset), config, str(out), quiet=True)
        results[workers] = report
        label = "in-process" if workers == 0 else f"ray x{workers}"
        print(f"  {label:11s} {report.seconds:7.2f} s   {report.faces / report.seconds:6.1f} faces/s   "
              f"faces {report.faces}   (wall incl. actor start and model load)")
    ray.shutdown()
    base, one, two = (results[w].seconds for w in (0, 1, 2))
    print(f"  2 workers vs 1: {one / two:.2f}x   Ray overhead (1 worker vs in-process): {one / base:.2f}x")


def main() -> int:
    """Run the sections asked for and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()
    if not (args.root / "original_sequences").is_dir():
        print(f"ffpp-mini not found at {args.root}", file=sys.stderr)
        return 1
    floor_vs_dfprep(args.root, load_config(None))  # the default (fast) detector; see protocols.py for the recipes
    with tempfile.TemporaryDirectory(prefix="dfprep-bench-") as tmp:
        if not args.skip_memory:
            memory_flat(Path(tmp))
        if not args.skip_scaling:
            scaling(args.root, Path(tmp))
    print(json.dumps({"cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
