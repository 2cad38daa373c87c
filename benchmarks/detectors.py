"""Face yield and time of `detection.detector` hog / cnn / cascade on hard clips, as a user runs `dfprep extract`.

    .venv/bin/python benchmarks/detectors.py [--runs 2] [--frames 16] [--detectors hog cascade cnn] [--root DIR]

The hard set is built at run time under a temporary folder (never committed) from ffpp-mini: the first
`--clip-frames` frames of each video, re-encoded with PyAV (libx264, crf 18), with the frames of one segment
rolled about the face's centre by ±50–60° (a strongly tilted head: dlib's frontal HOG misses most of them, its
mmod CNN finds them). The unrolled frames are the untouched video, where HOG finds every face.

For each detector: `dfprep extract folder HARD -o OUT --frames N --set detection.detector=D` with default flags
otherwise, `--runs` times; the worst wall is printed with the CPU-seconds of that run (the command and the
processes it waited for) and the 1-min load average before/after. Yield = planned frames that got a face /
planned frames, from the output's own indexes; `cnn faces` = samples whose `detector` is cnn. Asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow.parquet as pq

from dfprep.vision.faces import frontal_detector

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_speed import DFPREP, timed_command  # noqa: E402
from decode_floor import DEFAULT_ROOT  # noqa: E402

ROLLS = (55.0, -60.0, 50.0, -55.0, 60.0, -50.0, 55.0)  # one per video, in catalogue order
SEGMENT = (0.35, 0.55)  # the rolled share of each clip (start, end): ~3 of 16 uniform frames


def face_centre(frame: np.ndarray) -> tuple[float, float]:
    """Centre of the largest face HOG finds on the frame (scaled to 640 px), else the frame's centre."""
    factor = 640 / max(frame.shape[:2])
    small = cv2.resize(frame, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    faces = sorted(frontal_detector()(small, 1), key=lambda r: r.area())
    if not faces:
        return frame.shape[1] / 2, frame.shape[0] / 2
    centre = faces[-1].center()
    return centre.x / factor, centre.y / factor


def roll(frame: np.ndarray, degrees: float) -> np.ndarray:
    """The frame turned about the face's centre (a head tilting in place), corners filled by reflection."""
    height, width = frame.shape[:2]
    matrix = cv2.getRotationMatrix2D(face_centre(frame), degrees, 1.0)
    return cv2.warpAffine(frame, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)


def hard_clip(source: Path, target: Path, degrees: float, frames: int) -> None:
    """Re-encode the first `frames` frames of `source`, the SEGMENT share of them rolled by `degrees`."""
    first, last = int(SEGMENT[0] * frames), int(SEGMENT[1] * frames)
    target.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as reader, av.open(str(target), "w") as writer:
        video = reader.streams.video[0]
        stream = writer.add_stream("libx264", rate=video.average_rate or 25)
        stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for index, frame in enumerate(reader.decode(video)):
            if index >= frames:
                break
            image = frame.to_ndarray(format="rgb24")
            if first <= index < last:
                image = roll(image, degrees)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                writer.mux(packet)
        for packet in stream.encode():
            writer.mux(packet)


def build_hard_set(root: Path, target: Path, frames: int) -> list[Path]:
    """The hard set as a `folder` dataset: originals under real/, fakes under fake/."""
    videos = sorted(root.glob("**/*.mp4"))
    made = []
    for video, degrees in zip(videos, ROLLS * (len(videos) // len(ROLLS) + 1)):
        label = "real" if "original_sequences" in video.parts else "fake"
        made.append(target / label / video.name)
        hard_clip(video, made[-1], degrees, frames)
    return made


def output_yield(out: Path) -> dict[str, int]:
    """Planned frames, planned frames with a face, faces and faces found by the CNN, from the output's indexes."""
    planned = sum(pq.read_table(out / "videos.parquet", columns=["frames_planned"]).column(0).to_pylist())
    rows = [row for path in sorted(out.glob("*-??????.parquet"))
            for row in pq.read_table(path, columns=["video_id", "planned_frame", "detector"]).to_pylist()]
    found = len({(row["video_id"], row["planned_frame"]) for row in rows})
    return {"planned": planned, "found": found, "faces": len(rows),
            "cnn": sum(1 for row in rows if row["detector"] == "cnn")}


def measure(detector: str, hard: Path, out: Path, frames: int, runs: int) -> dict[str, float]:
    """The worst of `runs` CLI runs of one detector, with the yield of its output."""
    worst: dict[str, float] = {}
    for _ in range(runs):
        shutil.rmtree(out, ignore_errors=True)
        result = timed_command([*DFPREP, "extract", "folder", str(hard), "-o", str(out), "--frames", str(frames),
                                "--quiet", "--set", f"detection.detector={detector}"])
        print(f"  {detector:8s} wall {result['wall']:6.1f} s  cpu {result['cpu']:6.1f} s  "
              f"load {result['load']:.2f}->{result['load_after']:.2f}", flush=True)
        if not worst or result["wall"] > worst["wall"]:
            worst = result
    return {**worst, **output_yield(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="ffpp-mini (the hard set's source)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16, help="planned frames per video")
    parser.add_argument("--clip-frames", type=int, default=120, help="frames kept from each source video")
    parser.add_argument("--detectors", nargs="+", default=["hog", "cascade", "cnn"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dfprep-detectors-") as scratch:
        hard = Path(scratch) / "hard"
        videos = build_hard_set(args.root, hard, args.clip_frames)
        print(f"hard set: {len(videos)} clips of {args.clip_frames} frames, frames {int(SEGMENT[0] * 100)}–"
              f"{int(SEGMENT[1] * 100)}% rolled by ±50–60°; {args.frames} planned frames each; worst of {args.runs}")
        results = {d: measure(d, hard, Path(scratch) / f"out-{d}", args.frames, args.runs) for d in args.detectors}
    base = results.get("hog")
    print(f"\n{'detector':9s} {'yield':>11s} {'cnn faces':>9s} {'wall s':>7s} {'cpu s':>7s} {'x hog wall':>10s} "
          f"{'load':>11s}")
    for detector, r in results.items():
        ratio = f"{r['wall'] / base['wall']:.2f}" if base else "-"
        print(f"{detector:9s} {r['found']:4d}/{r['planned']:<4d}{100 * r['found'] / max(r['planned'], 1):3.0f}% "
              f"{r['cnn']:9d} {r['wall']:7.1f} {r['cpu']:7.1f} {ratio:>10s} {r['load']:5.2f}->{r['load_after']:.2f}")


if __name__ == "__main__":
    main()
