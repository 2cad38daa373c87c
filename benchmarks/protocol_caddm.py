"""How close the `caddm` recipes are to what CADDM's own code gives its model, on ffpp-mini's three pairs.

    .venv/bin/python benchmarks/protocol_caddm.py [--root ../shared/data/ffpp-mini] [--frames 8] [--jitters 4]

Extracts 519/519_515, 634/634_660 and 004/004_982 with the `caddm-ffpp` recipe (in-process), then prints:
1. pair registration: PSNR outside the face between each fake crop and its registered original
   (`<key>.original.png`) vs the original's own crop at the same frame (its `pair_key` sample);
2. test-time crop: dfprep's stored crops vs CADDM's crop (benchmarks/caddm_reference.py: its detection and
   `align_5p`, re-implemented) on the same decoded frames — landmark offset and PSNR; plus what dfprep's
   default (fast) detector and the untruncated eye centres would give;
3. training crop: `CaddmRandomCrop` on the stored context crop vs CADDM's `get_align5p` on the full frame
   with the same random parameters — PSNR, and how much of each crop the context crop covers;
4. cost: bytes per sample and the time the in-step decoding of originals takes.
Asserts nothing; tests/test_protocol_caddm.py checks the same numbers on fewer frames.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import cv2
import dlib
import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import caddm_reference as reference  # noqa: E402

from dfprep.vision.align import five_points, similarity_matrix, template_points, transform_points  # noqa: E402
from dfprep.catalog import scan  # noqa: E402
from dfprep.config import DetectionConfig, load_config  # noqa: E402
from dfprep.vision.faces import FaceAnalyzer  # noqa: E402
from dfprep.vision.models import resolve_model  # noqa: E402
from dfprep.runner.run import RunReport, extract_run  # noqa: E402
from dfprep.vision.video import decode_frames, probe  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ffpp-mini"
PAIRS = {"519_515": "519", "634_660": "634", "004_982": "004"}


@dataclass
class Stored:
    """One extracted sample, decoded: crops, landmarks and its json."""

    key: str
    meta: dict[str, Any]
    members: dict[str, bytes]

    def image(self, member: str) -> np.ndarray:
        """An image member as RGB."""
        array = cv2.imdecode(np.frombuffer(self.members[member], np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)

    @property
    def landmarks(self) -> np.ndarray:
        """Crop landmarks (ldm.npy)."""
        return np.load(io.BytesIO(self.members["ldm.npy"]), allow_pickle=False)


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB (over `where` when given)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    error = np.mean((a[where] - b[where]) ** 2) if where is not None else np.mean((a - b) ** 2)
    return float(10 * np.log10(255 ** 2 / max(error, 1e-10)))


def outside_face(landmarks: np.ndarray, a: np.ndarray, b: np.ndarray, grow: int = 8) -> np.ndarray:
    """Pixels outside the landmark hull grown by `grow` px, where at least one image shows the frame."""
    face = np.zeros(a.shape[:2], np.uint8)
    cv2.fillConvexPoly(face, cv2.convexHull(np.round(landmarks).astype(np.int32)), 1)
    grown = cv2.dilate(face, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    return (grown == 0) & ((a.max(2) > 0) | (b.max(2) > 0))


def extract_pairs(root: Path, out: Path, frames: int) -> RunReport:
    """The three families with the caddm-ffpp recipe, as `dfprep extract --pipeline caddm-ffpp` runs them."""
    config = load_config("caddm-ffpp", {"ray.workers": 0, "sampling.frames": frames})
    wanted = set(PAIRS) | set(PAIRS.values())
    records = [r for r in scan("ffpp", root, config.dataset) if r.video_id.rsplit("/", 1)[-1] in wanted]
    return extract_run(records, config, str(out), quiet=True)


def read_output(out: Path) -> tuple[dict[str, Stored], dict[str, str]]:
    """Every sample by key, and each video's path by id."""
    samples: dict[str, Stored] = {}
    for tar_path in sorted(out.glob("*.tar")):
        grouped: dict[str, dict[str, bytes]] = defaultdict(dict)
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                grouped[key][extension] = tar.extractfile(member).read()
        samples.update({k: Stored(k, json.loads(m["json"]), m) for k, m in grouped.items()})
    paths = {r["video_id"]: r["path"] for r in pq.read_table(out / "videos.parquet").to_pylist()}
    return samples, paths


def registration(samples: dict[str, Stored], grow: int = 8) -> dict[str, dict[str, list[float]]]:
    """Per fake video: PSNR outside the face (hull + `grow` px) vs its registered original and the original's crop."""
    result: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"registered": [], "own": []})
    for sample in samples.values():
        if sample.meta["label"] != 1 or not sample.meta.get("has_original"):
            continue
        fake, registered = sample.image("png"), sample.image("original.png")
        own = samples[sample.meta["pair_key"]].image("png") if sample.meta.get("pair_key") in samples else None
        landmarks = sample.landmarks
        result[sample.meta["video_id"]]["registered"].append(
            psnr(fake, registered, outside_face(landmarks, fake, registered, grow)))
        if own is not None:
            result[sample.meta["video_id"]]["own"].append(psnr(fake, own, outside_face(landmarks, fake, own, grow)))
    return dict(result)


def decoded_frames(samples: Iterable[Stored], paths: dict[str, str]) -> dict[str, np.ndarray]:
    """key → the full decoded frame each sample was cut from (one pass per video)."""
    by_video: dict[str, list[Stored]] = defaultdict(list)
    for sample in samples:
        by_video[sample.meta["video_id"]].append(sample)
    frames: dict[str, np.ndarray] = {}
    for video_id, members in by_video.items():
        path = paths[video_id]
        wanted = {s.meta["frame"]: s.key for s in members}
        for frame in decode_frames(path, sorted(wanted), probe(path)):
            frames[wanted[frame.index]] = frame.image
    return frames


def decoder_agreement(samples: dict[str, Stored], frames: dict[str, np.ndarray], paths: dict[str, str]) -> int:
    """Largest pixel difference between dfprep's decoded frames and OpenCV's VideoCapture (CADDM's decoder)."""
    wanted: dict[str, dict[int, str]] = defaultdict(dict)
    for key in frames:
        wanted[samples[key].meta["video_id"]][samples[key].meta["frame"]] = key
    worst = 0
    for video_id, by_index in wanted.items():
        capture = cv2.VideoCapture(paths[video_id])
        for index in range(max(by_index) + 1):
            ok, bgr = capture.read()
            if not ok:
                raise RuntimeError(f"OpenCV could not read frame {index} of {paths[video_id]}")
            if index in by_index:
                theirs = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(int)
                worst = max(worst, int(np.abs(theirs - frames[by_index[index]]).max()))
        capture.release()
    return worst


def landmark_offset(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance between two (N, 2) landmark sets, in crop pixels."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=1).mean())


def test_crop_agreement(samples: dict[str, Stored], frames: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """dfprep's stored crops vs CADDM's crop of the same frames with CADDM's own detection and formula."""
    predictor = str(resolve_model("dlib68").path)
    detector, shape_predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor)
    fast = FaceAnalyzer(DetectionConfig(detector="hog"), resolve_model("dlib68").path)  # the default cascade's HOG
    figures: dict[str, list[float]] = defaultdict(list)
    previous_video = None
    for key in sorted(frames, key=lambda k: (samples[k].meta["video_id"], samples[k].meta["frame"])):
        sample, frame = samples[key], frames[key]
        if sample.meta["video_id"] != previous_video:
            fast.reset()
            previous_video = sample.meta["video_id"]
        theirs = reference.detect_like_caddm(frame, detector, shape_predictor)
        matrix = reference.crop_matrix(theirs)
        their_crop, their_points = reference.crop(frame, matrix), transform_points(theirs, matrix[:2])
        figures["offset"].append(landmark_offset(sample.landmarks, their_points))
        figures["psnr"].append(psnr(sample.image("png"), their_crop))
        stored = np.asarray(sample.meta["landmarks"])
        figures["formula"].append(landmark_offset(transform_points(stored, np.asarray(sample.meta["matrix"])),
                                                  transform_points(stored, reference.crop_matrix(stored)[:2])))
        untruncated = similarity_matrix(five_points(stored), template_points("caddm", 224, 0.9))
        figures["untruncated"].append(landmark_offset(transform_points(stored, untruncated),
                                                      transform_points(stored, matrix[:2])))
        quick = fast.analyze(frame)
        if quick:
            figures["fast_detector"].append(landmark_offset(transform_points(quick[0].landmarks, matrix[:2]),
                                                            their_points))
    return figures


def training_crop_agreement(samples: dict[str, Stored], frames: dict[str, np.ndarray],
                            jitters: int) -> dict[str, list[float]]:
    """CaddmRandomCrop on the stored context crop vs CADDM's jittered crop of the full frame, same parameters."""
    import torch

    from dfprep.torch.transforms import caddm_crop_matrix, caddm_five_points, warp_chw

    rng = np.random.default_rng(0)
    figures: dict[str, list[float]] = defaultdict(list)
    for key in sorted(frames):
        sample, frame = samples[key], frames[key]
        context = sample.image("context.png")
        stream = {"landmarks": None, "frame_landmarks": np.asarray(sample.meta["landmarks"]),
                  "frame_matrix": np.asarray(sample.meta["context_matrix"])}
        for _ in range(jitters):
            jitter = reference.draw_jitter(rng)
            theirs = reference.crop(frame, reference.crop_matrix(stream["frame_landmarks"], jitter))
            matrix = caddm_crop_matrix(caddm_five_points(stream), 224, jitter.scale, jitter.shift, jitter.rotation,
                                       jitter.stretch_eyes, jitter.stretch_sides)
            ours = warp_chw(torch.from_numpy(context.transpose(2, 0, 1).astype(np.float32)), matrix, 224)
            ours = ours.numpy().transpose(1, 2, 0)
            covered = cv2.warpPerspective(np.ones(context.shape[:2], np.float32), matrix, (224, 224)) > 0.999
            figures["coverage"].append(float(covered.mean()))
            figures["psnr"].append(psnr(ours, theirs, covered))
    return figures


def sample_bytes(samples: dict[str, Stored]) -> dict[str, float]:
    """Mean bytes per sample, fakes with registered originals and reals."""
    fakes = [sum(map(len, s.members.values())) for s in samples.values() if s.meta.get("has_original")]
    reals = [sum(map(len, s.members.values())) for s in samples.values() if s.meta["label"] == 0]
    return {"fake": float(np.mean(fakes)) if fakes else 0.0, "real": float(np.mean(reals)) if reals else 0.0}


def spread(values: list[float], unit: str = "", digits: int = 2) -> str:
    """median [min–max] of a list."""
    if not values:
        return "n/a"
    return f"{np.median(values):.{digits}f}{unit} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def print_agreement(samples: dict[str, Stored], paths: dict[str, str], jitters: int) -> None:
    """Sections 1-3: registration, the test-time crop and the training crop against CADDM's."""
    for grow in (8, 32):
        print(f"\n1. registration: PSNR outside the face (landmark hull + {grow} px), fake crop vs its registered "
              "original | vs the original's own crop")
        for video, values in sorted(registration(samples, grow).items()):
            print(f"  {video:32s} registered {spread(values['registered'], ' dB', 1):24s} "
                  f"own {spread(values['own'], ' dB', 1)}")
    frames = decoded_frames(samples.values(), paths)
    figures = test_crop_agreement(samples, frames)
    print(f"\n2. test-time crop vs CADDM's (its detection + align_5p, re-implemented) on the same {len(frames)} frames")
    print(f"  decoded frames vs OpenCV's VideoCapture (CADDM's decoder): largest pixel difference "
          f"{decoder_agreement(samples, frames, paths)}")
    print(f"  stored crop: landmark offset {spread(figures['offset'], ' px', 4)}, PSNR {spread(figures['psnr'], ' dB', 1)}")
    print(f"  crop formula alone (same landmarks): offset {spread(figures['formula'], ' px', 4)}")
    print(f"  without CADDM's eye-centre truncation: offset {spread(figures['untruncated'], ' px', 3)}")
    print(f"  dfprep's default detector (640 px, tracking, upsample ladder): offset "
          f"{spread(figures['fast_detector'], ' px', 3)}")
    try:
        training = training_crop_agreement(samples, frames, jitters)
    except ImportError:
        print("\n3. skipped: needs torch")
        return
    covered = np.array(training["coverage"])
    print(f"\n3. training crop (CaddmRandomCrop on the 2x context crop vs get_align5p on the frame), "
          f"{len(training['psnr'])} crops")
    print(f"  PSNR over covered pixels {spread(training['psnr'], ' dB', 1)}; share of crop covered "
          f"{spread(training['coverage'], '', 4)}; fully covered {np.mean(covered > 0.9999):.1%}")


def main() -> None:
    """Extract, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--jitters", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        report = extract_pairs(args.root, Path(folder), args.frames)
        wall = time.perf_counter() - started
        samples, paths = read_output(Path(folder))
    print(f"== caddm-ffpp on ffpp-mini pairs: {report.faces} faces from {report.videos} videos, {args.frames} frames "
          f"each, {wall:.1f} s in-process ==")
    print_agreement(samples, paths, args.jitters)
    sizes = sample_bytes(samples)
    decode, original = report.timings.get("decode", 0.0), report.timings.get("decode_original", 0.0)
    print(f"\n4. cost: {sizes['fake'] / 1e3:.0f} kB per fake sample (4 PNGs), {sizes['real'] / 1e3:.0f} kB per real; "
          f"originals decoded in step: {original:.2f} s vs {decode:.2f} s decoding the videos themselves; "
          "stages " + ", ".join(f"{k} {v:.1f}s" for k, v in report.timings.most_common()))


if __name__ == "__main__":
    main()
