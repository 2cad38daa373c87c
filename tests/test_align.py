"""Alignment presets: exact geometry on synthetic landmarks, then real crops of the astronaut face."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.transform import SimilarityTransform

from dfprep.vision.align import (DEEPFAKEBENCH_POINTS, AlignedFace, align_face, alignment_points, deepfakebench_points,
                          five_points, similarity_matrix, template_points, transform_points)
from dfprep.config import AlignmentConfig, DetectionConfig
from dfprep.vision.faces import Face, FaceAnalyzer
from tests.helpers.synthetic import FacePlacement, render_frame
from tests.helpers.deepfakebench_reference import reference_template


def model_path(file_name: str) -> Path:
    """A dlib model shipped by face_recognition_models, found without importing it (needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations, "face_recognition_models is not installed"
    return Path(spec.submodule_search_locations[0]) / "models" / file_name


PRESETS = [AlignmentConfig(preset="deepfakebench", size=256, scale=1.3),
           AlignmentConfig(preset="arcface5", size=256, scale=1.3),
           AlignmentConfig(preset="caddm", size=224, scale=0.9)]


def similarity(angle_deg: float, zoom: float, shift: tuple[float, float]) -> np.ndarray:
    """A 2x3 rotation + uniform scale + translation."""
    angle = np.deg2rad(angle_deg)
    c, s = zoom * np.cos(angle), zoom * np.sin(angle)
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


def layout_68(five: np.ndarray) -> np.ndarray:
    """A 68-point iBUG-ordered layout whose five alignment points are exactly `five`."""
    eye_distance = float(np.linalg.norm(five[1] - five[0]))
    ring = 0.12 * eye_distance * np.stack([np.cos(np.arange(6) * np.pi / 3), np.sin(np.arange(6) * np.pi / 3)], 1)
    points = np.zeros((68, 2))
    centre = five.mean(axis=0)
    jaw = np.linspace(-0.9, 0.9, 17) * np.pi / 2
    points[:17] = centre + eye_distance * np.stack([np.sin(jaw), 0.2 + 0.9 * np.cos(jaw)], 1)
    points[17:27] = np.linspace(five[0], five[1], 10) - [0, 0.3 * eye_distance]
    points[27:36] = np.linspace(0.5 * (five[0] + five[1]), five[2], 9)
    points[36:42], points[42:48] = five[0] + ring, five[1] + ring
    points[48:68] = np.linspace(five[3], five[4], 20) + [0, 0.05 * eye_distance]
    points[30], points[48], points[54] = five[2], five[3], five[4]
    return points


def layout_for(preset: str, five: np.ndarray) -> np.ndarray:
    """A 68-point layout whose preset alignment points (DeepfakeBench's shape points, or eye centres…) are `five`."""
    points = layout_68(five)
    if preset == "deepfakebench":
        points[list(DEEPFAKEBENCH_POINTS)] = five
    return points


def test_five_points_reads_the_ibug_indices() -> None:
    five = template_points("deepfakebench", 256, 1.3)
    assert np.allclose(five_points(layout_68(five)), five, atol=1e-4)
    eighty_one = np.vstack([layout_68(five), np.full((13, 2), 999.0)])  # forehead points are ignored
    assert np.allclose(five_points(eighty_one), five, atol=1e-4)
    with pytest.raises(ValueError):
        five_points(np.zeros((12, 2)))


def test_similarity_matrix_recovers_a_known_transform() -> None:
    src = np.random.default_rng(0).uniform(0, 200, size=(7, 2))
    known = similarity(-33.0, 1.7, (12.5, -40.0))
    assert np.allclose(similarity_matrix(src, transform_points(src, known)), known, atol=1e-4)


@pytest.mark.parametrize("config", PRESETS, ids=lambda c: c.preset)
@pytest.mark.parametrize("angle,zoom,shift", [(0.0, 1.0, (0.0, 0.0)), (25.0, 2.3, (700.0, 310.0)),
                                              (-40.0, 0.6, (90.0, 500.0))])
def test_template_presets_land_the_five_points_on_the_template(config: AlignmentConfig, angle: float,
                                                               zoom: float, shift: tuple[float, float]) -> None:
    template = template_points(config.preset, config.size, config.scale)
    crop_to_frame = similarity(angle, zoom, shift)
    landmarks = transform_points(layout_for(config.preset, template), crop_to_frame)
    frame = np.zeros((1080, 1920, 3), np.uint8)
    aligned = align_face(frame, landmarks, (0, 0, 1, 1), config)
    assert aligned.crop.shape == (config.size, config.size, 3) and aligned.crop.dtype == np.uint8
    assert aligned.matrix.shape == (2, 3) and aligned.matrix.dtype == np.float64
    truncation = 1.5 / zoom if config.preset == "caddm" else 0.0  # CADDM floors eye centres to whole frame px
    fitted = five_points if config.preset == "caddm" else lambda points: alignment_points(config.preset, points)
    assert np.abs(fitted(aligned.landmarks) - template).max() < 0.05 + truncation
    assert np.allclose(aligned.landmarks, landmarks @ aligned.matrix[:, :2].T + aligned.matrix[:, 2], atol=1e-3)
    assert aligned.context is None and aligned.context_matrix is None


def test_caddm_preset_is_caddms_own_crop_formula() -> None:
    """The preset against a re-implementation of CADDM's align_5p (benchmarks/caddm_reference.py)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import caddm_reference

    rng = np.random.default_rng(3)
    config = AlignmentConfig(preset="caddm", size=224, scale=0.9)
    for _ in range(20):
        crop_to_frame = similarity(rng.uniform(-30, 30), rng.uniform(0.5, 3.0), tuple(rng.uniform(100, 900, 2)))
        landmarks = np.round(transform_points(layout_68(template_points("caddm", 224, 0.9)), crop_to_frame)
                             + rng.normal(0, 2, (68, 2)))  # dlib gives whole pixels
        reference = caddm_reference.crop_matrix(landmarks)
        ours = align_face(np.zeros((8, 8, 3), np.uint8), landmarks, (0, 0, 1, 1), config).matrix
        assert np.abs(reference[2] - [0, 0, 1]).max() < 1e-5  # no jitter: CADDM's matrix is affine (float32 fit)
        corners = np.array([[[0.0, 0.0], [223.0, 0.0], [0.0, 223.0], [223.0, 223.0]]])
        frame_corners = cv2.perspectiveTransform(corners, np.linalg.inv(reference))[0]
        assert np.abs(transform_points(frame_corners, ours) - corners[0]).max() < 0.01  # crop px


def test_deepfakebench_template_is_the_scaled_112_template_with_margin() -> None:
    at_112 = template_points("deepfakebench", 112, 1.0)
    assert np.allclose(at_112[0], (38.2946, 51.6963)) and np.allclose(at_112[4], (70.7299, 92.2041))
    with_margin = template_points("deepfakebench", 256, 1.3)
    assert np.allclose(with_margin, 128 + (at_112 * 256 / 112 - 128) / 1.3)
    assert np.allclose(with_margin, reference_template(256, 1.3), atol=1e-4)  # built DeepfakeBench's way
    assert np.array_equal(template_points("arcface5", 256, 1.3), with_margin)  # same template, other points


def test_deepfakebench_points_are_the_eyelids_nose_tip_and_outer_lip() -> None:
    shape = np.arange(81 * 2, dtype=np.float32).reshape(81, 2)
    assert np.array_equal(deepfakebench_points(shape), shape[[37, 44, 30, 49, 55]])
    assert np.array_equal(deepfakebench_points(shape[:68]), shape[[37, 44, 30, 49, 55]])
    with pytest.raises(ValueError, match="arcface5"):
        deepfakebench_points(shape[:5])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deepfakebench_matrix_is_scikit_image_umeyama_on_its_five_points(seed: int) -> None:
    rng = np.random.default_rng(seed)
    five = template_points("deepfakebench", 256, 1.3)
    frame_to_crop = similarity(rng.uniform(-30, 30), rng.uniform(0.3, 3), tuple(rng.uniform(0, 900, 2)))
    shape = transform_points(layout_for("deepfakebench", five), frame_to_crop) + rng.normal(0, 3, (68, 2))
    shape = np.round(shape).astype(np.float32)  # dlib hands out integer points
    ours = align_face(np.zeros((8, 8, 3), np.uint8), shape, (0, 0, 1, 1), AlignmentConfig()).matrix
    theirs = SimilarityTransform.from_estimate(shape[[37, 44, 30, 49, 55]], reference_template(256, 1.3)).params[:2]
    assert np.abs(ours - theirs).max() < 1e-4
    corners = np.array([[0, 0], [255, 0], [0, 255], [255, 255]], np.float64)  # where the crop corners come from
    frame_corners = transform_points(corners, cv2.invertAffineTransform(ours))
    assert np.abs(transform_points(frame_corners, theirs) - corners).max() < 1e-3


def test_caddm_template_keeps_the_eye_line_and_zooms_the_eye_distance() -> None:
    for scale in (0.9, 1.0, 1.1):
        points = template_points("caddm", 224, scale)
        assert points[0, 1] == pytest.approx(224 / 2.42)
        assert points[1, 0] - points[0, 0] == pytest.approx(80 * scale)
    with pytest.raises(ValueError):
        template_points("box", 224, 1.0)


def test_crop_pixels_come_from_the_mapped_frame_positions() -> None:
    five = template_points("deepfakebench", 256, 1.3)
    frame_landmarks = transform_points(layout_68(five), similarity(15.0, 2.0, (500.0, 200.0)))
    frame = np.zeros((1080, 1920, 3), np.uint8)
    marker = frame_landmarks[30]  # the nose tip gets a bright dot
    cv2.circle(frame, (int(round(marker[0])), int(round(marker[1]))), 4, (255, 255, 255), -1)
    aligned = align_face(frame, frame_landmarks, (0, 0, 1, 1), AlignmentConfig())
    bright = np.argwhere(aligned.crop[:, :, 0] > 128)
    assert len(bright) > 0
    assert np.abs(bright.mean(axis=0)[::-1] - aligned.landmarks[30]).max() < 1.5


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    """A HOG analyzer with the 68-point predictor."""
    return FaceAnalyzer(DetectionConfig(detector="hog"), model_path("shape_predictor_68_face_landmarks.dat"))


def detect_one(analyzer: FaceAnalyzer, frame: np.ndarray) -> Face:
    """The single face of a frame."""
    analyzer.reset()
    faces = analyzer.analyze(frame)
    assert len(faces) == 1
    return faces[0]


def eye_centres(aligned: AlignedFace) -> np.ndarray:
    """Left and right eye centres in crop pixels."""
    return five_points(aligned.landmarks)[:2]


def test_real_face_crop_puts_the_eyes_on_the_template(analyzer: FaceAnalyzer) -> None:
    frame = render_frame(1280, 720, [FacePlacement(500, 200, 1.6)])
    face = detect_one(analyzer, frame)
    aligned = align_face(frame, face.landmarks, face.box, AlignmentConfig())
    assert aligned.crop.shape == (256, 256, 3) and aligned.crop.dtype == np.uint8
    template = template_points("deepfakebench", 256, 1.3)
    assert np.linalg.norm(eye_centres(aligned) - template[:2], axis=1).max() < 8
    assert np.allclose(aligned.landmarks, transform_points(face.landmarks, aligned.matrix))
    # the crop shows the face, not background: the skin around the nose is the astronaut's
    nose = aligned.landmarks[30].round().astype(int)
    assert aligned.crop[nose[1] - 5:nose[1] + 5, nose[0] - 5:nose[0] + 5].std() < 40


@pytest.mark.parametrize("angle", [20.0, -20.0])
def test_rotated_face_comes_out_upright(analyzer: FaceAnalyzer, angle: float) -> None:
    upright = render_frame(640, 480, [FacePlacement(200, 120, 1.0)])
    turn = cv2.getRotationMatrix2D((305.0, 220.0), angle, 1.0)
    frame = cv2.warpAffine(upright, turn, (640, 480), borderMode=cv2.BORDER_REFLECT)
    face = detect_one(analyzer, frame)
    left_eye, right_eye = five_points(face.landmarks)[:2]
    tilt = np.degrees(np.arctan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0]))
    assert abs(abs(tilt) - 20) < 5  # the eyes really are tilted in the frame
    still = detect_one(analyzer, upright)
    for config in PRESETS:
        turned = align_face(frame, face.landmarks, face.box, config)
        level = align_face(upright, still.landmarks, still.box, config)
        turn_in_crop = np.degrees(np.arctan2(turned.matrix[1, 0], turned.matrix[0, 0]) -
                                  np.arctan2(level.matrix[1, 0], level.matrix[0, 0]))
        assert abs(turn_in_crop - angle) < 1.5  # the crop turns back by the angle the frame was turned
        eyes = eye_centres(turned)
        if config.preset != "deepfakebench":  # its 5-point fit leaves this face's eyes ~3 px from level
            assert abs(eyes[0, 1] - eyes[1, 1]) < 2


def test_box_preset_is_a_square_around_all_landmarks(analyzer: FaceAnalyzer) -> None:
    frame = render_frame(1920, 1080, [FacePlacement(900, 300, 2.5)])
    face = detect_one(analyzer, frame)
    config = AlignmentConfig(preset="box", size=256, scale=1.3)
    aligned = align_face(frame, face.landmarks, face.box, config)
    assert aligned.crop.shape == (256, 256, 3)
    matrix = aligned.matrix
    assert matrix[0, 1] == 0 and matrix[1, 0] == 0 and matrix[0, 0] == pytest.approx(matrix[1, 1])
    low, high = aligned.landmarks.min(axis=0), aligned.landmarks.max(axis=0)
    assert (low > 0).all() and (high < 256).all()
    assert (high - low).max() == pytest.approx(256 / 1.3, abs=0.5)  # longer side fills size / scale
    assert np.allclose((low + high) / 2, 128, atol=0.5)


def test_context_crop_keeps_the_face_crop_density_around_the_same_centre(analyzer: FaceAnalyzer) -> None:
    frame = render_frame(1280, 720, [FacePlacement(500, 200, 1.6)])
    face = detect_one(analyzer, frame)
    config = AlignmentConfig(preset="caddm", size=224, scale=0.9, context_scale=1.5)
    aligned = align_face(frame, face.landmarks, face.box, config)
    assert aligned.context is not None and aligned.context.shape == (336, 336, 3)  # 1.5 × 224, nothing squeezed
    in_context = transform_points(face.landmarks, aligned.context_matrix)
    assert np.allclose(in_context, aligned.landmarks + 56, atol=1e-3)  # same zoom, shifted by the margin
    middle = aligned.context[56:280, 56:280].astype(int)
    # the face crop is the context's centre (two warps round apart by up to 2 levels on OpenCV 4.x, 1 on 5.x)
    assert np.abs(middle - aligned.crop.astype(int)).max() <= 2


def test_context_scale_below_one_is_refused() -> None:
    from dfprep.config import load_config
    from dfprep.errors import ConfigError

    with pytest.raises(ConfigError, match="context_scale"):
        load_config(None, {"alignment.context_scale": 0.5})
    assert load_config(None, {"alignment.context_scale": 1.25}).alignment.context_scale == 1.25


def test_five_point_predictor_shapes_align_close_to_68_point_ones(analyzer: FaceAnalyzer) -> None:
    frame = render_frame(640, 480, [FacePlacement(200, 120, 1.0)])
    face = detect_one(analyzer, frame)
    dlib5_model = model_path("shape_predictor_5_face_landmarks.dat")
    dlib5 = FaceAnalyzer(DetectionConfig(detector="hog"), dlib5_model).analyze(frame)[0]
    five = five_points(dlib5.landmarks)
    assert np.abs(five[:3] - five_points(face.landmarks)[:3]).max() < 3  # eyes and nose tip
    config = AlignmentConfig(preset="arcface5")
    from_five = align_face(frame, dlib5.landmarks, dlib5.box, config)
    from_68 = align_face(frame, face.landmarks, face.box, config)
    assert from_five.landmarks.shape == (5, 2)
    corners = np.array([[0, 0], [255, 255]], np.float64)
    frame_corners = cv2.invertAffineTransform(from_68.matrix)
    assert np.abs(transform_points(transform_points(corners, frame_corners), from_five.matrix) - corners).max() < 20
