"""detection.detector: cascade — HOG first, dlib's CNN only on the planned frames HOG left faceless.

The synthetic clip rolls the face by 60° on some frames: dlib's HOG (a frontal detector) misses it there at
every upsampling, dlib's mmod CNN finds it (measured: HOG finds a rolled face up to ~45°, mmod beyond 60°).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from dfprep.catalog.base import VideoRecord
from dfprep.cli import cli
from dfprep.config import load_config
from dfprep.config.loader import available_recipes
from dfprep.errors import ModelError
from dfprep.config.schema import DetectionConfig
from dfprep.jobs.extract import ExtractionModels, VideoExtractor, nearest_boxes
from dfprep.io.shards import Sample
from dfprep.vision.faces import CASCADE_HINT_FACE, CascadeFallback, FaceAnalyzer, hint_windows
from dfprep.vision.models import resolve_model
from tests.helpers.synthetic import FacePlacement, face_box_in_frame, linear_motion, render_frame, write_clip

WIDTH, HEIGHT, FRAMES, ROLL = 320, 240, 16, 60.0
ROLLED = range(5, 12)  # frames shown rolled; with 8 uniform frames and a reach of 1, planned 6, 8, 10 stay faceless
PLACES = linear_motion(FacePlacement(60, 20, 0.8), FacePlacement(80, 30, 0.8))
# Recipes that claim a paper's protocol: they keep that paper's detector (dlib HOG) whatever the default is.
PAPER_RECIPES = {"deepfakebench", "deepfakebench-ffpp", "deepfakebench-dfd", "caddm", "caddm-ffpp", "prle",
                 "prle-ffpp"}


def _roll(index: int, frame: np.ndarray) -> np.ndarray:
    """The frame turned by ROLL degrees about its centre on the ROLLED frames (a strongly tilted head)."""
    if index not in ROLLED:
        return frame
    matrix = cv2.getRotationMatrix2D((WIDTH / 2, HEIGHT / 2), ROLL, 1.0)
    return cv2.warpAffine(frame, matrix, (WIDTH, HEIGHT), borderMode=cv2.BORDER_REFLECT)


def _rolled_face_centre(index: int) -> np.ndarray:
    """Where the face's centre lands on a rolled frame (the test oracle)."""
    x0, y0, x1, y1 = face_box_in_frame(PLACES(index, FRAMES)[0])
    matrix = cv2.getRotationMatrix2D((WIDTH / 2, HEIGHT / 2), ROLL, 1.0)
    return matrix @ np.array([(x0 + x1) / 2, (y0 + y1) / 2, 1.0])


@pytest.fixture(scope="module")
def rolled_clip(tmp_path_factory) -> VideoRecord:
    path = write_clip(tmp_path_factory.mktemp("cascade") / "rolled.mp4", WIDTH, HEIGHT, FRAMES, PLACES,
                      frame_filter=_roll)
    return VideoRecord("t/real/raw/rolled", str(path), "t", "real", "raw", "train", 0, "t/real/raw/rolled")


def _extract(record: VideoRecord, detector: str, **changes: object) -> tuple[dict, dict[int, Sample], tuple[int, int]]:
    """One video through the engine: its row, its samples by frame, and how many frames the CNN searched, of
    them on the whole frame (the others only around HOG's faces on the nearest frames)."""
    config = load_config(None, {"sampling.frames": 8, "sampling.neighbour_retry": 1,
                                "detection.detector": detector, **changes})
    extractor = VideoExtractor(config, ExtractionModels.resolve(config))
    samples: list[Sample] = []
    row = extractor.extract(record, None, samples.append).row
    cascade = extractor.analyzer.cascade
    calls = (cascade.calls, cascade.full_frames) if cascade is not None else (0, 0)
    return row, {json.loads(s.members["json"])["frame"]: s for s in samples}, calls


@pytest.fixture(scope="module")
def hog_and_cascade(rolled_clip):
    return _extract(rolled_clip, "hog"), _extract(rolled_clip, "cascade")


def test_cascade_finds_the_faces_hog_misses_and_marks_them_cnn(hog_and_cascade):
    (hog_row, hog, hog_calls), (row, cascade, calls) = hog_and_cascade
    assert sorted(hog) == [0, 2, 4, 12, 15] and hog_row["status"] == "partial" and hog_calls == (0, 0)
    assert sorted(cascade) == [0, 2, 4, 6, 8, 10, 12, 15] and row["status"] == "ok" and row["faces_written"] == 8
    assert (row["faces_cnn"], hog_row["faces_cnn"]) == (3, 0)  # videos.parquet: faces the CNN found
    assert calls == (3, 0)  # only the three planned frames still faceless after HOG and the neighbour retry, each
    # searched around the faces HOG found on the frames nearest to it (never on the whole frame)
    for frame, sample in cascade.items():
        meta = json.loads(sample.members["json"])
        assert meta["detector"] == sample.row["detector"] == ("cnn" if frame in (6, 8, 10) else "hog")
        if frame in (6, 8, 10):
            centre = np.add(meta["bbox"][:2], meta["bbox"][2:]) / 2
            assert np.abs(centre - _rolled_face_centre(frame)).max() < 15  # the rolled face, not a false box
            assert meta["planned_frame"] == frame
        else:
            assert sample.members == hog[frame].members  # what HOG found is exactly what `hog` writes
    keys = {tuple(sorted(json.loads(s.members["json"]))) for s in cascade.values()}
    assert len(keys) == 1  # HOG's and the CNN's samples carry the same fields: readers infer one schema


def test_without_faceless_frames_the_cascade_is_hog_and_never_runs_the_cnn(clips):
    record = VideoRecord("t/real/raw/clip", str(clips["face"]), "t", "real", "raw", "train", 0, "t/real/raw/clip")
    _, hog, _ = _extract(record, "hog")
    row, cascade, calls = _extract(record, "cascade")
    assert row["status"] == "ok" and calls == (0, 0)  # the CNN was never asked (so its detector never built)
    assert sorted(cascade) == sorted(hog) and len(hog) == 8
    assert all(cascade[f].members == hog[f].members for f in hog)
    assert {json.loads(s.members["json"])["detector"] for s in cascade.values()} == {"hog"}


def test_the_cnn_looks_around_the_hints_first_and_on_the_whole_frame_when_that_finds_nothing():
    place = FacePlacement(150, 50, 0.8)
    frame = render_frame(WIDTH + 160, HEIGHT + 80, [place])
    x0, y0, x1, y1 = face_box_in_frame(place)
    matrix = cv2.getRotationMatrix2D(((x0 + x1) / 2, (y0 + y1) / 2), -ROLL, 1.0)  # the head tilts in place
    rolled = cv2.warpAffine(frame, matrix, frame.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
    analyzer = FaceAnalyzer(DetectionConfig(), resolve_model("dlib68").path, resolve_model("mmod").path)
    assert analyzer.analyze(rolled) == []  # HOG misses the tilted face
    cascade = analyzer.cascade
    for hints, full_frames in (([(x0 + 6, y0 - 4, x1 + 6, y1 - 4)], 0), ([], 1), ([(10, 10, 80, 80)], 2)):
        faces = analyzer.analyze_fallback(rolled, hints)
        assert len(faces) == 1 and faces[0].detector == "cnn" and cascade.full_frames == full_frames
        centre = np.add(faces[0].box[:2], faces[0].box[2:]) / 2
        assert np.abs(centre - ((x0 + x1) / 2, (y0 + y1) / 2)).max() < 12
        assert faces[0].landmarks.shape == (68, 2)
    assert cascade.calls == 3


def test_hints_are_the_faces_of_the_nearest_frames_and_one_face_makes_one_window():
    boxes = {2: [(10.0, 10.0, 50.0, 50.0)], 4: [], 9: [(14.0, 10.0, 54.0, 50.0)], 12: [(200.0, 0.0, 240.0, 40.0)]}
    assert nearest_boxes(boxes, 6) == [(10.0, 10.0, 50.0, 50.0), (14.0, 10.0, 54.0, 50.0)]  # 4 had none
    assert nearest_boxes(boxes, 1) == [(10.0, 10.0, 50.0, 50.0)] and nearest_boxes({}, 3) == []
    windows = hint_windows(nearest_boxes(boxes, 6) + boxes[12], (240, 320, 3))
    assert [w for w, _ in windows] == [(0, 0, 84, 80), (170, 0, 270, 70)]  # 1.5 sides beyond each face
    assert [f for _, f in windows] == [CASCADE_HINT_FACE / 40] * 2


def test_a_faceless_video_pays_one_whole_frame_cnn_search(clips):
    record = VideoRecord("t/real/raw/none", str(clips["noface"]), "t", "real", "raw", "train", 0, "t/real/raw/none")
    row, samples, calls = _extract(record, "cascade")
    assert row["status"] == "no_face" and samples == {} and row["faces_cnn"] == 0
    assert calls == (8, 1)  # every planned frame reached the CNN; the whole frame was searched once, then never


def test_a_cascade_analyzer_needs_the_mmod_path():
    with pytest.raises(ValueError, match="cascade.*cnn_path"):
        CascadeFallback(None)


def test_paper_recipes_keep_their_papers_detector_and_the_rest_default_to_cascade():
    recipes = set(available_recipes())
    assert PAPER_RECIPES <= recipes
    detectors = {name: load_config(name).detection.detector for name in recipes}
    assert {name for name, detector in detectors.items() if detector == "hog"} == PAPER_RECIPES
    assert {detectors[name] for name in recipes - PAPER_RECIPES} == {"cascade"}
    assert load_config(None).detection.detector == "cascade"


def test_the_cascade_fails_up_front_in_one_line_without_the_cnn_model(tmp_path, monkeypatch):
    registry = tmp_path / "landmarks"
    registry.mkdir()
    (registry / "models.yaml").write_text(  # an install whose mmod file is gone (a trimmed wheel)
        "models:\n  - {name: mmod, kind: cnn_detector, points: 0, file: gone.dat, sha256: null, package: null,"
        " source: face_recognition_models}\n")
    monkeypatch.setenv("DFPREP_LANDMARKS", str(registry))
    assert ExtractionModels.resolve(load_config(None, {"detection.detector": "hog"})).cnn is None
    for detector in ("cascade", "cnn"):
        with pytest.raises(ModelError, match="model 'mmod' not found") as raised:
            ExtractionModels.resolve(load_config(None, {"detection.detector": detector}))
        assert "\n" not in str(raised.value)


def _members(out: Path) -> dict[str, bytes]:
    """Every member of every shard of an output, by shard and member name."""
    members = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members.update({f"{shard.name}/{m.name}": tar.extractfile(m).read() for m in tar.getmembers()})
    return members


@pytest.mark.integration
@pytest.mark.slow
def test_on_ffpp_mini_the_cascade_writes_hog_s_shards_and_never_runs_the_cnn(ffpp_mini, tmp_path, monkeypatch):
    calls = []
    original = CascadeFallback.detect
    monkeypatch.setattr(CascadeFallback, "detect", lambda self, *a: calls.append(1) or original(self, *a))
    outputs = {}
    for detector in ("hog", "cascade"):
        outputs[detector] = tmp_path / detector
        command = ["extract", "ffpp", str(ffpp_mini), "-o", str(outputs[detector]), "--workers", "0", "--quiet",
                   "--frames", "16", "--set", f"detection.detector={detector}"]
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0, result.output
    hog, cascade = _members(outputs["hog"]), _members(outputs["cascade"])
    assert calls == [] and len(hog) == 7 * 16 * 3  # a jpg, an ldm.npy and a json per face
    assert cascade == hog
