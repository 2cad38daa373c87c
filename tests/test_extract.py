"""The per-video engine on synthetic clips: faces found, aligned exactly, statuses and pairing right."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfprep.vision.align import deepfakebench_points, five_points, similarity_matrix, template_points
from dfprep.catalog.base import VideoRecord
from dfprep.config import load_config
from dfprep.jobs.extract import ExtractionModels, VideoExtractor, neighbour_order, plan_for_family
from dfprep.io.shards import Sample
from tests.helpers.synthetic import FacePlacement, face_box_in_frame, linear_motion, write_clip
from dfprep.vision.video import probe

from tests.helpers.synthetic import moving_face


def _record(path: Path, label: int = 0, video_id: str = "t/real/raw/clip", family: str | None = None,
            status: str = "found") -> VideoRecord:
    return VideoRecord(video_id, str(path), "t", "fake" if label else "real", "raw", "train", label,
                       family or video_id, status=status, error="" if status == "found" else "gone")


def _extract(config, record, original=None):
    samples: list[Sample] = []
    result = VideoExtractor(config, ExtractionModels.resolve(config)).extract(record, original, samples.append)
    return result.row, samples


@pytest.fixture(scope="module")
def config8():
    # the recipe spaces fakes by their own length, as DeepfakeBench does; pairing is tested on the default
    return load_config("deepfakebench", {"sampling.frames": 8, "sampling.pair_with_original": True})


def test_moving_face_yields_every_planned_frame_aligned_to_the_template(clips, config8):
    row, samples = _extract(config8, _record(clips["face"]))
    assert (row["status"], row["faces_written"], row["frames_planned"]) == ("ok", 8, 8)
    info = probe(clips["face"])
    template = template_points("deepfakebench", 256, 1.3)
    for sample in samples:
        meta = json.loads(sample.members["json"])
        assert "jpg" not in sample.members  # the recipe writes PNG, as DeepfakeBench does
        crop = cv2.imdecode(np.frombuffer(sample.members["png"], np.uint8), cv2.IMREAD_COLOR)
        assert crop.shape == (256, 256, 3)
        landmarks = np.load(io.BytesIO(sample.members["ldm.npy"]), allow_pickle=False)
        assert landmarks.dtype == np.float32 and landmarks.shape == (68, 2)
        assert np.abs(five_points(landmarks)[:2] - template[:2]).max() < 8  # eyes on the template
        refit = similarity_matrix(deepfakebench_points(landmarks), template)  # the crop is already the best fit
        assert np.allclose(refit, [[1, 0, 0], [0, 1, 0]], atol=0.02)
        expected = face_box_in_frame(moving_face()(meta["frame"], info.frame_count)[0])
        centre = np.add(meta["bbox"][:2], meta["bbox"][2:]) / 2
        assert np.abs(centre - np.add(expected[:2], expected[2:]) / 2).max() < 15
        frame_points = np.asarray(meta["landmarks"])
        mapped = frame_points @ np.asarray(meta["matrix"])[:, :2].T + np.asarray(meta["matrix"])[:, 2]
        assert np.abs(mapped - landmarks).max() < 0.05  # crop landmarks = matrix · frame landmarks
        assert sample.key == f"t-real-raw-clip-{meta['frame']:06d}" and sample.row["label"] == 0


def test_faceless_clip_is_no_face_with_a_reason(clips, config8):
    row, samples = _extract(config8, _record(clips["noface"]))
    assert row["status"] == "no_face" and samples == [] and "no face" in row["error"]
    assert "\n" not in row["error"]


def test_rotated_clip_gives_upright_faces(clips, config8):
    row, samples = _extract(config8, _record(clips["rotated"]))
    assert row["status"] == "ok" and row["faces_written"] == 8
    for sample in samples:
        landmarks = np.load(io.BytesIO(sample.members["ldm.npy"]))
        eyes, nose, mouth = landmarks[36:48, 1].mean(), landmarks[30, 1], landmarks[48:68, 1].mean()
        assert eyes < nose < mouth


def test_missing_and_unreadable_inputs_become_rows(tmp_path, config8):
    row, _ = _extract(config8, _record(tmp_path / "gone.mp4", status="missing"))
    assert row["status"] == "missing" and row["error"]
    bad = tmp_path / "text.mp4"
    bad.write_text("hello")
    row, samples = _extract(config8, _record(bad))
    assert row["status"] in ("unsupported", "decode_error") and samples == [] and row["error"]


def test_faceless_planned_frames_are_replaced_by_neighbours(tmp_path):
    blank = {5, 10}  # frames where the face is hidden; their neighbours still show it
    motion = linear_motion(FacePlacement(40, 30, 1.0), FacePlacement(60, 40, 1.0))
    hide = lambda i, frame: frame if i not in blank else cv2.GaussianBlur(frame, (0, 0), 25)  # noqa: E731
    path = write_clip(tmp_path / "gaps.mp4", 400, 300, 16, motion, gop=4, frame_filter=hide)
    config = load_config(None, {"sampling.mode": "stride", "sampling.stride": 5, "sampling.neighbour_retry": 0})
    row, _ = _extract(config, _record(path))
    assert row["status"] == "partial" and row["faces_written"] == 2  # frames 0 and 15 only
    config = load_config(None, {"sampling.mode": "stride", "sampling.stride": 5, "sampling.neighbour_retry": 2})
    row, samples = _extract(config, _record(path))
    assert row["status"] == "ok" and row["faces_written"] == 4
    stand_ins = {json.loads(s.members["json"])["planned_frame"]: json.loads(s.members["json"])["frame"]
                 for s in samples}
    assert stand_ins == {0: 0, 5: 6, 10: 11, 15: 15}


def test_neighbour_order_prefers_the_nearest_later_frame():
    assert neighbour_order(10, 2, 100) == [11, 9, 12, 8]
    assert neighbour_order(0, 2, 100) == [1, 2]
    assert neighbour_order(99, 1, 100) == [98]


def test_fakes_reuse_their_originals_frame_plan(tmp_path, clips, config8):
    original = _record(clips["face"])
    same_length = write_clip(tmp_path / "fake.mp4", 480, 360, 40, moving_face(), gop=7, seed=3)
    fake = _record(same_length, 1, "t/fake/raw/clip", original.video_id)
    cache: dict = {}
    plan, note = plan_for_family(fake, probe(same_length), str(clips["face"]), config8, cache)
    assert note == "paired" and plan == plan_for_family(original, probe(clips["face"]), None, config8, cache)[0]
    shorter = write_clip(tmp_path / "short.mp4", 480, 360, 30, moving_face(), gop=7)
    plan, note = plan_for_family(fake, probe(shorter), str(clips["face"]), config8, cache)
    assert note.startswith("clamped: frame counts differ (fake 30, original 40)")
    assert plan == [0, 4, 8, 12, 16, 20, 24, 29]  # the shorter video's linspace, the same indices in both
    original_of_30 = _record(shorter)
    plan, note = plan_for_family(_record(same_length, 1, "t/fake/raw/clip", original_of_30.video_id),
                                 probe(same_length), str(shorter), config8, cache)
    assert note.startswith("clamped: frame counts differ (fake 40, original 30)") and max(plan) == 29
    _, note = plan_for_family(fake, probe(shorter), str(tmp_path / "absent.mp4"), config8, cache)
    assert note == "own: original video absent"
    row, samples = _extract(config8, fake, str(clips["face"]))
    meta = json.loads(samples[0].members["json"])
    assert row["plan"] == "paired" and meta["pair_key"] == f"t-real-raw-clip-{meta['frame']:06d}"


def test_two_faces_with_select_all_get_tracks(tmp_path):
    two = lambda i, n: [FacePlacement(10 + i, 40, 0.9), FacePlacement(330 + i, 60, 0.9)]  # noqa: E731
    path = write_clip(tmp_path / "two.mp4", 640, 360, 12, two, gop=6)
    config = load_config(None, {"sampling.frames": 4, "detection.select": "all"})
    row, samples = _extract(config, _record(path))
    assert row["status"] == "ok" and row["faces_written"] == 8
    tracks: dict[int, list[float]] = {}
    for sample in samples:
        meta = json.loads(sample.members["json"])
        tracks.setdefault(meta["track_id"], []).append(meta["bbox"][0])
        assert sample.key.endswith(f"-t{meta['track_id']}")
    assert len(tracks) == 2 and all(len(xs) == 4 for xs in tracks.values())
    left, right = sorted(tracks.values(), key=lambda xs: xs[0])
    assert max(left) < 200 < min(right)  # ids never swap between the two people
    config = load_config(None, {"sampling.frames": 4, "detection.select": "largest"})
    row, _ = _extract(config, _record(path))
    assert row["faces_written"] == 4


def test_context_crop_for_caddm(clips):
    config = load_config("caddm", {"sampling.frames": 2})
    _, samples = _extract(config, _record(clips["face"]))
    sample = samples[0]
    assert set(sample.members) == {"png", "ldm.npy", "context.png", "json"}  # a real has no registered original
    crop = cv2.imdecode(np.frombuffer(sample.members["png"], np.uint8), cv2.IMREAD_COLOR)
    context = cv2.imdecode(np.frombuffer(sample.members["context.png"], np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape == (224, 224, 3) and context.shape == (448, 448, 3)
    assert np.abs(context[112:336, 112:336].astype(int) - crop.astype(int)).max() <= 1
    meta = json.loads(sample.members["json"])
    assert "context_matrix" in meta and meta["has_original"] is False and sample.row["has_original"] is False


def test_memory_stays_flat_with_video_length(tmp_path, config8):
    import tracemalloc

    motion = linear_motion(FacePlacement(20, 20, 0.9), FacePlacement(200, 100, 0.9))
    peaks = {}
    extractor = VideoExtractor(config8, ExtractionModels.resolve(config8))
    for frames in (40, 400):
        path = write_clip(tmp_path / f"len{frames}.mp4", 480, 360, frames, motion, gop=50, crf=30)
        tracemalloc.start()
        row = extractor.extract(_record(path), None, lambda sample: None).row
        peaks[frames] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert row["status"] == "ok" and row["faces_written"] == 8
    frame_bytes = 480 * 360 * 3
    assert peaks[400] < 6 * frame_bytes, peaks  # a handful of frames, never the video
    assert peaks[400] < peaks[40] * 1.5 + frame_bytes, peaks
