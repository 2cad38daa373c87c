"""CADDM's preprocessing formulas, re-implemented from reading its public code (not copied), to measure against.

What CADDM's code does (megvii-research/CADDM):
- `lib/extract_frames_ldm_ff++.py`: OpenCV decodes every frame; `np.linspace(0, count - 1, NUM_FRAMES)` per
  video by its own length; dlib HOG (`get_frontal_face_detector`) at upsample 1 on the full RGB frame; the
  81-point predictor on every detection; the face whose landmark bounding box has the largest area is kept;
  the full frame is saved as PNG with its landmarks (one dict per video is reused, so every frame of a video
  ends up carrying the last sampled frame's landmarks and source path).
- `lib/data_preprocess/cropface.py` `align_5p`: five points (eye centres truncated to whole pixels, nose tip
  30, mouth corners 48/54) fitted by least squares (rotation + uniform scale) to a mean face placed by
  `get_mean_face` (eye distance `face_width` · scale of the 224 canvas, eye line at 1/2.42 of the height),
  then a rotation about the canvas centre, then a perspective map that stretches the eye/mouth quadrilateral
  and translates it; one `cv2.warpPerspective` of the full frame (bilinear, black border).
- `prepare_test_input`: `align_5p` at scale 0.9, no jitter.
- `get_align5p` (training): scale ~ N(0.9, 0.1), translation U(-25, 25)² px, rotation 30·U(-1, 1)³ degrees,
  each of two stretches U(0.97, 1.03) with probability 0.2.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MEAN_FACE_5 = np.array([[-0.17607, -0.172844], [0.1736, -0.17356], [-0.00182, 0.0357164],
                        [-0.14617, 0.20185], [0.14496, 0.19943]])
EYE_DISTANCE_UNITS = 0.34967  # CADDM's mean face eye distance, the unit of `face_width`
EYE_LINE_DIVISOR = 2.42


@dataclass(frozen=True)
class CropJitter:
    """The random parameters of one CADDM training crop (identity values: its test-time crop)."""

    scale: float = 0.9
    shift: tuple[float, float] = (0.0, 0.0)
    rotation: float = 0.0  # degrees
    stretch_eyes: float = 1.0
    stretch_sides: float = 1.0


def mean_face(scale: float, face_width: float = 80, canvas: int = 224) -> np.ndarray:
    """Where CADDM puts the five points in the canvas for a given scale (its get_mean_face)."""
    points = MEAN_FACE_5 * scale
    unit = face_width / (canvas * EYE_DISTANCE_UNITS)
    eye_row = (points[0, 1] * unit + 0.5) * EYE_LINE_DIVISOR
    placed = np.empty_like(points)
    placed[:, 0] = (points[:, 0] * unit + 0.5) * canvas
    placed[:, 1] = (points[:, 1] * unit + 0.5) * canvas / eye_row
    return placed


def caddm_five_points(landmarks: np.ndarray) -> np.ndarray:
    """CADDM's five points: eye centres truncated to whole pixels (its astype('int')), nose tip, mouth corners."""
    points = np.asarray(landmarks, dtype=np.float64)
    left = np.trunc(points[36:42].mean(axis=0))
    right = np.trunc(points[42:48].mean(axis=0))
    return np.stack([left, right, points[30], points[48], points[54]])


def least_squares_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """3x3 rotation + uniform scale + shift minimising the squared error, via complex numbers."""
    z = source[:, 0] + 1j * source[:, 1]
    w = target[:, 0] + 1j * target[:, 1]
    zc, wc = z - z.mean(), w - w.mean()
    a = (np.conj(zc) * wc).sum() / (np.abs(zc) ** 2).sum()  # w ≈ a·z + t
    t = w.mean() - a * z.mean()
    return np.array([[a.real, -a.imag, t.real], [a.imag, a.real, t.imag], [0.0, 0.0, 1.0]])


def _stretched(points: np.ndarray, jitter: CropJitter) -> np.ndarray:
    """The eye/mouth quadrilateral after CADDM's two stretches and the translation."""
    moved = points.copy()

    def spread(i: int, j: int, factor: float) -> None:
        """Move points i and j apart (factor > 1) or together about their middle."""
        middle, half = (moved[i] + moved[j]) / 2, (moved[i] - moved[j]) / 2
        moved[i], moved[j] = middle + half * factor, middle - half * factor

    spread(0, 1, jitter.stretch_eyes)
    spread(2, 3, 1 / jitter.stretch_eyes)
    spread(0, 2, jitter.stretch_sides)
    spread(1, 3, 1 / jitter.stretch_sides)
    return moved + np.asarray(jitter.shift)


def crop_matrix(landmarks: np.ndarray, jitter: CropJitter = CropJitter(), face_width: float = 80,
                canvas: int = 224) -> np.ndarray:
    """CADDM's 3x3 frame → crop matrix (its align_5p): similarity, rotation, then stretch + shift."""
    target = mean_face(jitter.scale, face_width, canvas)
    fit = least_squares_similarity(caddm_five_points(landmarks), target)
    rotation = np.vstack([cv2.getRotationMatrix2D((canvas / 2, canvas / 2), jitter.rotation, 1.0), [0, 0, 1]])
    quad = target[[0, 1, 3, 4]].astype(np.float32)
    perspective = cv2.getPerspectiveTransform(quad, _stretched(quad, jitter).astype(np.float32))
    return perspective @ rotation @ fit


def crop(frame: np.ndarray, matrix: np.ndarray, canvas: int = 224) -> np.ndarray:
    """One bilinear warpPerspective of the full frame, black outside it (as CADDM)."""
    return cv2.warpPerspective(frame, matrix, (canvas, canvas))


def draw_jitter(rng: np.random.Generator) -> CropJitter:
    """CADDM's training-time crop parameters (get_align5p's distributions)."""
    scale = rng.normal(0.9, 0.1)
    shift = (rng.uniform(-25, 25), rng.uniform(-25, 25))
    rotation = 30 * rng.uniform(-1, 1) ** 3
    eyes = rng.uniform(0.97, 1.03) if rng.random() > 0.8 else 1.0
    sides = rng.uniform(0.97, 1.03) if rng.random() > 0.8 else 1.0
    return CropJitter(scale, shift, rotation, eyes, sides)


def detect_like_caddm(frame: np.ndarray, detector, predictor) -> np.ndarray | None:
    """dlib HOG at upsample 1 on the full frame; the face with the largest landmark bounding box."""
    best, best_area = None, -1.0
    for rect in detector(frame, 1):
        shape = predictor(frame, rect)
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        extent = points.max(axis=0) - points.min(axis=0)
        if extent[0] * extent[1] > best_area:
            best, best_area = points, float(extent[0] * extent[1])
    return best
