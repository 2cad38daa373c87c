"""How closely the paper recipes reproduce the papers' own preprocessing, measured on ffpp-mini.

    .venv/bin/python benchmarks/protocols.py [--root ../shared/data/ffpp-mini] [--frames 32] [--skip-decode]

deepfakebench: dfprep's samples (made by the extractor a run uses, PNG) against a re-implementation of
DeepfakeBench's `extract_aligned_face_dlib` (tests/helpers/deepfakebench_reference.py) on the same decoded frames.
Per video and overall: landmark offset in the 256-px crop (mean over the 68 points, per frame; median and
p95 over frames), PSNR between the crops (median and min), the offset to the landmarks DeepfakeBench saves
(re-detected on its crop), frames one side drops, and detection time per frame. Three settings: the
recipe, the same preset with dfprep's default fast detector, and the old eye-centre preset (arcface5).
Then: cv2.VideoCapture's frames (what DeepfakeBench decodes with) against dfprep's PyAV frames, and the FF++
method set each recipe takes from a synthetic full FF++ tree. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers: the reference re-implementation the tests use

from tests.helpers.deepfakebench_reference import (DeepfakeBench, FrameAgreement, agreement, dfprep_samples,  # noqa: E402
                                     make_extractor, psnr)

from dfprep.catalog import scan  # noqa: E402
from dfprep.config import load_config  # noqa: E402
from dfprep.vision.models import resolve_model  # noqa: E402
from dfprep.vision.video import decode_frames, frame_plan, probe  # noqa: E402

DEFAULT_ROOT = ROOT.parent / "shared" / "data" / "ffpp-mini"
FAST_DETECTOR = {"detection.working_size": 640, "detection.tracking": True, "detection.upsample_ladder": True}
SETTINGS = {  # name → overrides on top of the deepfakebench-ffpp recipe
    "recipe": {},
    "fast detector": FAST_DETECTOR,
    "arcface5 + fast": {**FAST_DETECTOR, "alignment.preset": "arcface5"},
}
FFPP_FOLDERS = ("original_sequences/youtube", "original_sequences/actors", "manipulated_sequences/Deepfakes",
                "manipulated_sequences/Face2Face", "manipulated_sequences/FaceSwap",
                "manipulated_sequences/NeuralTextures", "manipulated_sequences/FaceShifter",
                "manipulated_sequences/DeepFakeDetection")


def summary(rows: list[FrameAgreement], detect_s: float) -> str:
    """One line of figures for a set of frames."""
    both = [r for r in rows if r.ours and not np.isnan(r.offset)]
    offsets, psnrs = np.array([r.offset for r in both]), np.array([r.psnr for r in both])
    again = np.array([r.offset_redetected for r in both if not np.isnan(r.offset_redetected)])
    if not both:
        return "no frame on both sides"
    return (f"{len(both):4d} frames  offset median {np.median(offsets):6.3f} p95 {np.percentile(offsets, 95):6.3f} px"
            f"  PSNR median {np.median(psnrs):5.1f} min {psnrs.min():5.1f} dB"
            f"  vs saved ldm {np.median(again):5.2f} px"
            f"  DFB drops {sum(not r.theirs for r in rows)}  dfprep drops {sum(not r.ours for r in rows)}"
            f"  detect {1000 * detect_s / max(len(rows), 1):6.0f} ms/frame")


def deepfakebench_agreement(root: Path, frames: int) -> None:
    """The three settings against DeepfakeBench's crops, per video and overall."""
    base = load_config("deepfakebench-ffpp", {"sampling.frames": frames})
    records = list(scan("ffpp", root, base.dataset))
    print(f"\n== deepfakebench: dfprep vs DeepfakeBench's formulas, {len(records)} videos x {frames} frames ==")
    reference = DeepfakeBench(resolve_model(base.detection.landmarks).path)
    extractors = {name: make_extractor(load_config("deepfakebench-ffpp", {"sampling.frames": frames, **overrides}))
                  for name, overrides in SETTINGS.items()}
    everything: dict[str, list[FrameAgreement]] = {name: [] for name in SETTINGS}
    detect: Counter[str] = Counter()
    for record in records:
        references = reference.crops(record, base)
        print(f"  {Path(record.path).name}")
        for name, extractor in extractors.items():
            samples, timings = dfprep_samples(extractor, record)
            rows = agreement(record, samples, extractor.config.output.image_format, references)
            seconds = timings.get("detect", 0.0) + timings.get("landmarks", 0.0)
            everything[name] += rows
            detect[name] += seconds
            print(f"    {name:16s} {summary(rows, seconds)}")
    print("  all videos")
    for name, rows in everything.items():
        print(f"    {name:16s} {summary(rows, detect[name])}")


def decode_check(root: Path, frames: int) -> None:
    """cv2.VideoCapture (DeepfakeBench's decoder) against dfprep's PyAV decode: frame counts and pixels."""
    config = load_config("deepfakebench-ffpp", {"sampling.frames": frames})
    print("\n== decoders: cv2.VideoCapture (DeepfakeBench) vs PyAV (dfprep) on the planned frames ==")
    for record in scan("ffpp", root, config.dataset):
        info = probe(record.path)
        capture = cv2.VideoCapture(record.path)
        counted = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        plan = frame_plan(info, config.sampling)
        ours = {f.index: f.image for f in decode_frames(record.path, plan, info)}
        scores = []
        for index in range(plan[-1] + 1):
            ok, bgr = capture.read()
            if not ok:
                break
            if index in ours:
                scores.append(psnr(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), ours[index]))
        capture.release()
        print(f"  {Path(record.path).name:14s} frames cv2 {counted} dfprep {info.frame_count}"
              f"  PSNR median {np.median(scores):5.1f} min {min(scores):5.1f} dB over {len(scores)} frames")


def method_sets() -> None:
    """Videos per method each recipe takes from a synthetic full FF++ tree (2 videos per folder)."""
    print("\n== FF++ method sets: what each recipe takes from a full FF++ tree (2 videos per folder) ==")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for part in FFPP_FOLDERS:
            names = ("01__scene", "02__scene") if part.endswith("actors") else (
                ("01_02__scene__X", "02_01__scene__Y") if part.endswith("DeepFakeDetection") else
                (("000", "001") if part.startswith("original") else ("000_001", "001_000")))
            for name in names:
                path = root / part / "c23" / "videos" / f"{name}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
        for recipe in ("ffpp", "deepfakebench-ffpp", "caddm-ffpp", "prle-ffpp", "dfd"):
            taken = Counter(r.method for r in scan("ffpp", root, load_config(recipe).dataset))
            print(f"  {recipe:20s} " + ", ".join(f"{m} {n}" for m, n in sorted(taken.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args()
    method_sets()
    if not (args.root / "original_sequences").is_dir():
        sys.exit(f"ffpp-mini not found at {args.root}")
    if not args.skip_decode:
        decode_check(args.root, args.frames)
    deepfakebench_agreement(args.root, args.frames)


if __name__ == "__main__":
    main()
