"""FaceAnalyzer on frames with the real astronaut face pasted at known positions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dfprep.config import DetectionConfig
from dfprep.vision.faces import Face, FaceAnalyzer, box_centre
from tests.helpers.synthetic import FacePlacement, background, face_box_in_frame, render_frame


def model_path(file_name: str) -> Path:
    """A dlib model shipped by face_recognition_models, found without importing it (needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations, "face_recognition_models is not installed"
    return Path(spec.submodule_search_locations[0]) / "models" / file_name


PREDICTOR_68 = model_path("shape_predictor_68_face_landmarks.dat")


def analyzer(**changes) -> FaceAnalyzer:
    """A HOG analyzer with the default config changed by `changes`."""
    return FaceAnalyzer(DetectionConfig(**{"detector": "hog", **changes}), PREDICTOR_68)


@pytest.fixture(scope="module")
def shared() -> FaceAnalyzer:
    """One analyzer for the read-only checks (the predictor takes ~0.5 s to load)."""
    return analyzer()


def assert_box_near(face: Face, place: FacePlacement) -> None:
    """HOG boxes snap to 8-px cells and 6/5 pyramid steps: edges within 20% of the side, centre within 12 px/scale."""
    truth = face_box_in_frame(place)
    side = truth[2] - truth[0]
    assert np.abs(np.subtract(face.box, truth)).max() <= 0.2 * side, (face.box, truth)
    (cx, cy), (tx, ty) = box_centre(face.box), box_centre(truth)
    assert np.hypot(cx - tx, cy - ty) <= 12 * place.scale, (face.box, truth)


def assert_inside(points: np.ndarray, box: tuple[float, ...], margin: float) -> None:
    """Every point within the box grown by `margin` × its side."""
    x0, y0, x1, y1 = box
    grow = margin * (x1 - x0)
    assert (points[:, 0] >= x0 - grow).all() and (points[:, 0] <= x1 + grow).all(), (points, box)
    assert (points[:, 1] >= y0 - grow).all() and (points[:, 1] <= y1 + grow).all(), (points, box)


def assert_face_layout(face: Face) -> None:
    """Inner landmarks inside the box, the jaw (which HOG boxes cut) near it, eyes above nose above mouth."""
    points = face.landmarks
    assert points.dtype == np.float32 and points.shape == (68, 2)
    assert_inside(points[17:], face.box, 0.05)
    assert_inside(points[:17], face.box, 0.2)
    eyes_y, nose_y, mouth_y = points[36:48, 1].max(), points[30, 1], points[48:68, 1].min()
    assert eyes_y < nose_y < mouth_y
    left_eye, right_eye = points[36:42].mean(axis=0), points[42:48].mean(axis=0)
    assert left_eye[0] < points[30, 0] < right_eye[0]


@pytest.mark.parametrize("width,height,place", [
    (640, 480, FacePlacement(100, 60, 1.0)),
    (640, 480, FacePlacement(400, 250, 0.8)),
    (1280, 720, FacePlacement(700, 200, 1.5)),
    (1920, 1080, FacePlacement(300, 350, 2.5)),
    (1920, 1080, FacePlacement(1200, 100, 3.5)),
])
def test_box_and_landmarks_match_the_pasted_face(shared: FaceAnalyzer, width: int, height: int,
                                                  place: FacePlacement) -> None:
    shared.reset()
    faces = shared.analyze(render_frame(width, height, [place]))
    assert len(faces) == 1
    assert_box_near(faces[0], place)
    assert_face_layout(faces[0])
    assert faces[0].score > 0 and faces[0].track_id == 0


@pytest.mark.parametrize("width,height", [(640, 480), (1280, 720), (1920, 1080)])
def test_background_has_no_face(shared: FaceAnalyzer, width: int, height: int) -> None:
    shared.reset()
    assert shared.analyze(background(width, height)) == []


def test_full_size_detection_without_working_downscale() -> None:
    face_finder = analyzer(working_size=0, upsample=0)
    place = FacePlacement(500, 300, 1.2)
    faces = face_finder.analyze(render_frame(1280, 720, [place]))
    assert len(faces) == 1
    assert_box_near(faces[0], place)


def moving(start: FacePlacement, step: tuple[float, float], index: int) -> FacePlacement:
    """The placement of a face moving `step` px per frame."""
    return FacePlacement(start.x + step[0] * index, start.y + step[1] * index, start.scale)


@pytest.mark.parametrize("width,height,start,step", [
    (640, 480, FacePlacement(60, 40, 1.0), (25.0, 12.0)),
    (1920, 1080, FacePlacement(200, 150, 2.5), (60.0, 30.0)),
])
def test_tracking_follows_a_moving_face_without_full_detections(width: int, height: int,
                                                                 start: FacePlacement,
                                                                 step: tuple[float, float]) -> None:
    face_finder = analyzer()
    for index in range(6):
        place = moving(start, step, index)
        faces = face_finder.analyze(render_frame(width, height, [place]))
        assert len(faces) == 1 and faces[0].track_id == 0
        assert_box_near(faces[0], place)
        assert_face_layout(faces[0])
    assert face_finder.full_detections == 1
    assert face_finder.tracked_detections == 5
    assert face_finder.timings["detect"] > 0 and face_finder.timings["landmarks"] > 0


def test_lost_face_falls_back_to_full_detection_with_a_new_track() -> None:
    face_finder = analyzer()
    first, far = FacePlacement(40, 40, 1.0), FacePlacement(400, 250, 1.0)
    assert face_finder.analyze(render_frame(640, 480, [first]))[0].track_id == 0
    faces = face_finder.analyze(render_frame(640, 480, [far]))
    assert len(faces) == 1 and faces[0].track_id == 1
    assert_box_near(faces[0], far)
    assert face_finder.full_detections == 2 and face_finder.tracked_detections == 0
    assert face_finder.analyze(background(640, 480)) == []
    assert face_finder.full_detections == 3


def test_reset_forgets_tracks() -> None:
    face_finder = analyzer()
    frame = render_frame(640, 480, [FacePlacement(100, 60, 1.0)])
    face_finder.analyze(frame)
    face_finder.reset()
    assert face_finder.analyze(frame)[0].track_id == 0
    assert face_finder.full_detections == 2


def test_tracking_off_detects_every_frame() -> None:
    face_finder = analyzer(tracking=False)
    for index in range(3):
        face_finder.analyze(render_frame(640, 480, [moving(FacePlacement(60, 40, 1.0), (20, 10), index)]))
    assert face_finder.full_detections == 3 and face_finder.tracked_detections == 0


LEFT, RIGHT = FacePlacement(20, 120, 1.0), FacePlacement(380, 60, 1.05)


def test_select_all_keeps_track_ids_of_two_faces() -> None:
    face_finder = analyzer(select="all")
    ids_of_left = set()
    for index in range(5):
        left, right = moving(LEFT, (12, -8), index), moving(RIGHT, (-10, 10), index)
        faces = face_finder.analyze(render_frame(800, 480, [left, right]))
        assert len(faces) == 2
        by_x = sorted(faces, key=lambda f: f.box[0])
        assert_box_near(by_x[0], left)
        assert_box_near(by_x[1], right)
        ids_of_left.add(by_x[0].track_id)
        assert {f.track_id for f in faces} == {0, 1}
    assert len(ids_of_left) == 1  # the left face never swapped ids with the right one
    assert face_finder.full_detections == 1 and face_finder.tracked_detections == 4


def test_select_largest_and_centre() -> None:
    small_centre, large_side = FacePlacement(300, 160, 0.8), FacePlacement(10, 20, 1.3)
    frame = render_frame(800, 480, [small_centre, large_side])
    largest = analyzer(select="largest").analyze(frame)
    assert len(largest) == 1
    assert_box_near(largest[0], large_side)
    centre = analyzer(select="centre").analyze(frame)
    assert len(centre) == 1
    assert_box_near(centre[0], small_centre)


def test_five_point_predictor() -> None:
    face_finder = FaceAnalyzer(DetectionConfig(detector="hog"), model_path("shape_predictor_5_face_landmarks.dat"))
    place = FacePlacement(100, 60, 1.0)
    faces = face_finder.analyze(render_frame(640, 480, [place]))
    points = faces[0].landmarks
    assert points.shape == (5, 2) and points.dtype == np.float32
    x0, y0, x1, y1 = face_box_in_frame(place)
    assert ((points >= (x0 - 10, y0 - 10)) & (points <= (x1 + 10, y1 + 10))).all()
    assert points[4, 1] > points[:4, 1].max()  # nose base below the four eye corners


def test_cnn_detector_finds_the_face() -> None:
    face_finder = FaceAnalyzer(DetectionConfig(detector="cnn", upsample=0), PREDICTOR_68,
                               model_path("mmod_human_face_detector.dat"))
    place = FacePlacement(100, 60, 1.0)
    faces = face_finder.analyze(render_frame(640, 480, [place]))
    assert len(faces) == 1 and faces[0].detector == "cnn"  # the sample json's `detector`
    assert_box_near(faces[0], place)
    assert_face_layout(faces[0])


def test_cnn_needs_its_model_path() -> None:
    with pytest.raises(ValueError, match="cnn_path"):
        FaceAnalyzer(DetectionConfig(detector="cnn"), PREDICTOR_68)


def test_each_thread_gets_its_own_hog_detector_copied_from_one_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """dlib's model is built once per process (it costs ~0.4 s under the GIL); every other thread gets a copy
    that finds exactly what a freshly built detector finds."""
    import threading

    import dlib

    from dfprep.vision import faces

    builds: list[int] = []
    real_build = dlib.get_frontal_face_detector

    def counted_build():
        builds.append(1)
        return real_build()

    monkeypatch.setenv("DFPREP_CACHE_DIR", "none")  # every process build counted (tests/test_hog.py: the cache)
    monkeypatch.setattr(faces, "_hog_template", [])
    monkeypatch.setattr(faces, "_per_thread", threading.local())
    monkeypatch.setattr(faces.dlib, "get_frontal_face_detector", counted_build)
    detectors: list[object] = []
    threads = [threading.Thread(target=lambda: detectors.extend([faces.frontal_detector()] * 2)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert len({id(d) for d in detectors}) == 3 and all(detectors[i] is detectors[i + 1] for i in (0, 2, 4))
    image = render_frame(640, 480, [FacePlacement(200, 100, 1.2)], seed=3)
    expected = real_build().run(image, 0, -0.5)
    for detector in detectors[::2]:
        rects, scores, kinds = detector.run(image, 0, -0.5)
        assert [(r.left(), r.top(), r.right(), r.bottom()) for r in rects] == \
            [(r.left(), r.top(), r.right(), r.bottom()) for r in expected[0]] and len(rects) >= 1
        assert scores == expected[1] and kinds == expected[2]
