"""FramePixels converts only the regions the face stages read, and every pixel it delivers, every face found,
every landmark and every crop equal what converting whole frames gives."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import av
import numpy as np
import pytest

from dfprep.config import AlignmentConfig, DetectionConfig, SamplingConfig
from dfprep.vision.align import align_face
from dfprep.vision.faces import FaceAnalyzer
from dfprep.vision.pixels import FramePixels, upright_rgb
from dfprep.vision.video import decode_frames, frame_plan, probe
from tests.helpers.synthetic import FacePlacement, linear_motion, write_clip

PREDICTOR = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]) / "models" / \
    "shape_predictor_68_face_landmarks.dat"


def first_frame(path: Path) -> av.VideoFrame:
    """The first decoded frame of a video, as the decoder hands it over."""
    with av.open(str(path)) as container:
        return next(container.decode(video=0))


@pytest.mark.parametrize("width,height", [(320, 240), (330, 250)])  # 330: rows padded in memory
def test_any_region_of_a_420_frame_is_exactly_the_whole_frames_pixels_there(tmp_path, width, height):
    clip = write_clip(tmp_path / "c.mp4", width, height, 2, linear_motion(FacePlacement(20, 10, 0.8),
                                                                           FacePlacement(40, 20, 0.8)))
    frame = first_frame(clip)
    assert frame.format.name == "yuv420p"
    whole = upright_rgb(frame, 0)
    rng, checked = np.random.default_rng(1), 0
    for _ in range(40):
        x0, y0 = int(rng.integers(-20, width)), int(rng.integers(-20, height))
        x1, y1 = x0 + int(rng.integers(1, 200)), y0 + int(rng.integers(1, 200))
        pixels = FramePixels(frame)
        array = pixels.region((x0, y0, x1, y1))
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        assert array.shape == whole.shape
        if cx1 > cx0 and cy1 > cy0:
            assert np.array_equal(array[cy0:cy1, cx0:cx1], whole[cy0:cy1, cx0:cx1]), (x0, y0, x1, y1)
            checked += 1
    assert checked >= 25


def test_later_regions_keep_what_earlier_ones_converted_and_a_large_one_converts_the_whole_frame(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", 640, 480, 2, linear_motion(FacePlacement(20, 10, 0.8),
                                                                      FacePlacement(40, 20, 0.8)))
    frame = first_frame(clip)
    whole = upright_rgb(frame, 0)
    pixels = FramePixels(frame)
    pixels.region((10, 10, 60, 60))
    array = pixels.region((300, 200, 340, 260))  # a second region: the first one is still exact
    assert np.array_equal(array[10:60, 10:60], whole[10:60, 10:60])
    assert np.array_equal(array[200:260, 300:340], whole[200:260, 300:340])
    assert np.array_equal(pixels.region((0, 0, 600, 400)), whole)  # most of the frame: converted whole
    assert np.array_equal(pixels.full(), whole)


def test_a_rotated_frame_is_converted_whole_and_upright(tmp_path):
    clip = write_clip(tmp_path / "r.mp4", 320, 240, 2, linear_motion(FacePlacement(20, 10, 0.8),
                                                                      FacePlacement(40, 20, 0.8)), rotation=90)
    info = probe(clip)
    frame = next(iter(decode_frames(clip, [0], info)))
    assert frame.shape == (320, 240, 3) and info.rotation == 90
    assert np.array_equal(frame.pixels.region((0, 0, 10, 10)), frame.image)  # no region conversion when rotated


def test_faces_landmarks_and_crops_from_regions_equal_those_from_whole_frames_on_every_ffpp_mini_video(ffpp_mini):
    """Two analyzers walk the same frames with tracking on, one on regions, one on whole frames: equal boxes,
    landmarks, track ids and crop bytes, and the region path converted less than the whole frames."""
    on_regions = FaceAnalyzer(DetectionConfig(detector="hog"), PREDICTOR)
    on_wholes = FaceAnalyzer(DetectionConfig(detector="hog"), PREDICTOR)
    alignment = AlignmentConfig(context_scale=1.5)
    faces_compared, converted, total = 0, 0, 0
    for path in sorted(ffpp_mini.rglob("*.mp4")):
        info = probe(path)
        on_regions.reset()
        on_wholes.reset()
        for frame in decode_frames(path, frame_plan(info, SamplingConfig(mode="uniform", frames=10)), info):
            found = on_regions.analyze(frame.pixels)
            crops = [align_face(frame.pixels, f.landmarks, f.box, alignment) for f in found]
            valid = frame.pixels._valid
            converted += (valid[2] - valid[0]) * (valid[3] - valid[1])
            total += frame.shape[0] * frame.shape[1]
            whole = frame.image  # now converted whole
            expected = on_wholes.analyze(whole)
            assert [(f.box, f.track_id, f.score) for f in found] == [(f.box, f.track_id, f.score) for f in expected]
            for face, other, crop in zip(found, expected, crops):
                assert np.array_equal(face.landmarks, other.landmarks)
                reference = align_face(whole, other.landmarks, other.box, alignment)
                assert np.array_equal(crop.crop, reference.crop) and np.array_equal(crop.context, reference.context)
                faces_compared += 1
    assert faces_compared >= 70  # every planned frame of the 7 videos holds a face
    assert converted < 0.75 * total
