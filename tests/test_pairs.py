"""Fake/original pairs (CADDM's training data): clamped plans, registered originals, and why a fake has none."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

from dfprep.vision.align import warp
from dfprep.catalog.base import VideoRecord
from dfprep.config import load_config
from dfprep.jobs.extract import ExtractionModels, VideoExtractor
from dfprep.jobs.pairs import OriginalFrames
from dfprep.io.shards import Sample
from tests.helpers.synthetic import FacePlacement, linear_motion, write_clip
from dfprep.vision.pixels import pixels_in
from dfprep.vision.video import decode_frames, probe

FRAMES = 4  # the `pairs_out` fixture (tests/conftest.py) samples 4 frames per video


def read_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """key → {extension: payload} over every shard."""
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return samples


def image(payload: bytes) -> np.ndarray:
    """PNG/JPEG bytes → RGB."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def frame_of(path: Path, index: int) -> np.ndarray:
    """One decoded RGB frame."""
    return next(iter(decode_frames(path, [index], probe(path)))).image


def outside_face_psnr(a: np.ndarray, b: np.ndarray, landmarks: np.ndarray) -> float:
    """PSNR over the pixels outside the face (the landmark hull grown by 8 px) that lie inside the frame."""
    face = np.zeros(a.shape[:2], np.uint8)
    cv2.fillConvexPoly(face, cv2.convexHull(np.round(landmarks).astype(np.int32)), 1)
    outside = (cv2.dilate(face, np.ones((17, 17), np.uint8)) == 0) & ((a.max(2) > 0) | (b.max(2) > 0))
    error = float(np.mean((a[outside].astype(float) - b[outside].astype(float)) ** 2))
    return 10 * np.log10(255 ** 2 / max(error, 1e-9))


def test_each_fake_stores_its_originals_frame_cut_with_the_fakes_own_matrices(pairs_out):
    root, out = pairs_out
    samples = read_samples(out)
    original_video = root / "original_sequences/youtube/c23/videos/000.mp4"
    fakes = {k: s for k, s in samples.items() if "Deepfakes" in k}
    assert len(fakes) == FRAMES
    for key, members in fakes.items():
        meta = json.loads(members["json"])
        assert meta["has_original"] is True and set(members) >= {"png", "original.png", "context.png",
                                                                  "original_context.png"}
        frame = frame_of(original_video, meta["frame"])  # the original's frame at the fake's index
        expected = warp(frame, np.asarray(meta["matrix"]), 224)
        expected_context = warp(frame, np.asarray(meta["context_matrix"]), 448)
        assert np.abs(image(members["original.png"]).astype(int) - expected).max() <= 1, key
        assert np.abs(image(members["original_context.png"]).astype(int) - expected_context).max() <= 1, key
        assert image(members["context.png"]).shape == (448, 448, 3)


def test_the_registered_original_lines_up_with_the_fake_better_than_the_originals_own_crop(pairs_out):
    _, out = pairs_out
    samples = read_samples(out)
    registered, own = [], []
    for key, members in samples.items():
        if "Deepfakes" not in key:
            continue
        meta = json.loads(members["json"])
        fake = image(members["png"])
        landmarks = np.load(io.BytesIO(members["ldm.npy"]), allow_pickle=False)
        registered.append(outside_face_psnr(fake, image(members["original.png"]), landmarks))
        own.append(outside_face_psnr(fake, image(samples[meta["pair_key"]]["png"]), landmarks))
    assert min(registered) > 27 and np.median(registered) > np.median(own) + 6, (registered, own)


def test_pair_notes_say_how_each_fake_was_planned_and_registered(pairs_out):
    _, out = pairs_out
    rows = {r["video_id"]: r for r in pq.read_table(out / "videos.parquet").to_pylist()}
    same, shorter, orphan = (rows[f"ffpp/{m}/c23/{n}"] for m, n in
                             (("Deepfakes", "000_001"), ("FaceSwap", "000_002"), ("Face2Face", "003_004")))
    assert (same["plan"], same["pair"]) == ("paired", f"registered {FRAMES}/{FRAMES}")
    assert shorter["plan"].startswith("clamped: frame counts differ (fake 12, original 16)")
    assert shorter["pair"] == f"registered {FRAMES}/{FRAMES}"
    assert orphan["plan"] == "own: original video absent"
    assert orphan["pair"] == f"registered 0/{FRAMES} ({FRAMES} without: original video absent)"
    assert rows["ffpp/youtube/c23/000"]["pair"] == ""


def test_sample_json_and_index_say_whether_a_fake_has_its_original(pairs_out):
    _, out = pairs_out
    samples = read_samples(out)
    metas = {k: json.loads(s["json"]) for k, s in samples.items()}
    index = {r["key"]: r for p in sorted(out.glob("train-*.parquet")) for r in pq.read_table(p).to_pylist()}
    for key, meta in metas.items():
        assert index[key]["has_original"] == meta["has_original"] == ("original.png" in samples[key])
        if "Face2Face" in key:
            assert meta["has_original"] is False and meta["original_missing"] == "original video absent"
            assert meta["pair_key"] == ""  # no original sample to point at
        if "FaceSwap" in key:
            assert meta["frame"] < 12 and meta["pair_key"] == ""  # clamped plan: not the original's own frames
        if "Deepfakes" in key:
            assert meta["pair_key"] in samples  # the original's own sample at the same frame exists


def _record(path: Path, label: int, video_id: str, family: str) -> VideoRecord:
    return VideoRecord(video_id, str(path), "t", "fake" if label else "real", "raw", "train", label, family)


def _extract(config, record: VideoRecord, original: Path | None,
             extractor: VideoExtractor | None = None) -> tuple[dict, list[Sample]]:
    samples: list[Sample] = []
    extractor = extractor or VideoExtractor(config, ExtractionModels.resolve(config))
    result = extractor.extract(record, str(original) if original else None, samples.append)
    return result.row, samples


def test_original_frames_follow_the_fake_and_restart_for_earlier_frames(clips):
    info = probe(clips["face"])
    frames = OriginalFrames(info, [10, 20, 30], deadline=None)
    for index in (10, 20, 5, 11, 11, 30):  # 5, 11: stand-ins for faceless frames, behind or between planned ones
        image_at, problem = frames.at(index)
        assert problem == "" and np.array_equal(pixels_in(image_at), frame_of(clips["face"], index)), index
    assert frames.at(info.frame_count) == (None, f"original has {info.frame_count} frames")
    frames.close()


def test_stand_in_frames_get_the_originals_frame_at_their_own_index(tmp_path):
    motion = linear_motion(FacePlacement(40, 30, 1.0), FacePlacement(90, 60, 1.0))
    original = write_clip(tmp_path / "original.mp4", 400, 300, 16, motion, gop=4)
    hide = lambda i, frame: frame if i not in (5, 10) else cv2.GaussianBlur(frame, (0, 0), 25)  # noqa: E731
    fake = write_clip(tmp_path / "fake.mp4", 400, 300, 16, motion, gop=4, frame_filter=hide)
    config = load_config("caddm", {"sampling.mode": "stride", "sampling.stride": 5, "sampling.neighbour_retry": 2})
    row, samples = _extract(config, _record(fake, 1, "t/fake/raw/a", "t/real/raw/a"), original)
    assert row["status"] == "ok" and row["pair"] == "registered 4/4"
    for sample in samples:
        meta = json.loads(sample.members["json"])
        expected = warp(frame_of(original, meta["frame"]), np.asarray(meta["matrix"]), 224)
        assert np.abs(image(sample.members["original.png"]).astype(int) - expected).max() <= 1
    metas = sorted((json.loads(s.members["json"]) for s in samples), key=lambda m: m["frame"])
    assert [m["frame"] for m in metas] == [0, 6, 11, 15]
    assert [m["pair_key"] != "" for m in metas] == [True, False, False, True]  # stand-ins have no original sample


def test_an_original_of_another_size_is_resized_like_caddm_and_an_unreadable_one_is_named(tmp_path):
    motion = linear_motion(FacePlacement(40, 30, 1.0), FacePlacement(90, 60, 1.0))
    fake = write_clip(tmp_path / "fake.mp4", 400, 300, 8, motion, gop=4)
    small = write_clip(tmp_path / "small.mp4", 200, 150, 8, lambda i, n: [], gop=4)
    config = load_config("caddm", {"sampling.frames": 2})
    extractor = VideoExtractor(config, ExtractionModels.resolve(config))
    row, samples = _extract(config, _record(fake, 1, "t/fake/raw/a", "t/real/raw/a"), small, extractor)
    assert row["pair"] == "registered 2/2; original frames resized from 200x150"
    assert all(json.loads(s.members["json"])["has_original"] for s in samples)
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    row, samples = _extract(config, _record(fake, 1, "t/fake/raw/a", "t/real/raw/a"), broken, extractor)
    assert row["status"] == "ok" and row["plan"].startswith("own: original unreadable")
    meta = json.loads(samples[0].members["json"])
    assert meta["has_original"] is False and meta["original_missing"].startswith("original unreadable")


def test_memory_stays_flat_with_registered_originals(tmp_path):
    import tracemalloc

    motion = linear_motion(FacePlacement(20, 20, 0.9), FacePlacement(200, 100, 0.9))
    config = load_config("caddm", {"sampling.frames": 6, "alignment.context_scale": 0.0, "detection.tracking": True,
                                   "detection.upsample_ladder": True})  # fast detection: memory is the point
    extractor = VideoExtractor(config, ExtractionModels.resolve(config))
    peaks = {}
    for frames in (40, 400):
        path = write_clip(tmp_path / f"len{frames}.mp4", 480, 360, frames, motion, gop=50, crf=30)
        tracemalloc.start()
        row = extractor.extract(_record(path, 1, "t/fake/raw/x", "t/real/raw/x"), str(path), lambda s: None).row
        peaks[frames] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert row["pair"] == "registered 6/6"
    frame_bytes = 480 * 360 * 3
    assert peaks[400] < 8 * frame_bytes, peaks  # the fake's and the original's frame, never a video
    assert peaks[400] < peaks[40] * 1.5 + frame_bytes, peaks
