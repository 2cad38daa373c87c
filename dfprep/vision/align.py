"""Face crops and their matrices: 5-point similarity presets (DeepfakeBench, ArcFace, CADDM) and a square box.

Every crop is one `cv2.warpAffine` of the full frame with a 2x3 matrix (frame pixels → crop pixels),
and the frame landmarks are carried into the crop by the same matrix, never re-detected, so crop
landmarks and pixels always agree (DeepfakeBench re-detects landmarks on its crop instead; see
docs/protocols.md for how far the two differ). Pixels outside the frame are black (BORDER_CONSTANT),
as in both reference pipelines: replicated borders would smear edge pixels into streaks a detector
could learn.

The optional context crop shares the face crop's centre, orientation and zoom but covers
`context_scale` times its extent (so it is `context_scale` × `size` pixels wide, nothing squeezed):
what blending augmentations (SBI, CADDM's multi-scale swap) and CADDM's random crops need around the face.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from dfprep.config import AlignmentConfig
from dfprep.vision.pixels import Picture, Region, pixels_in

# The 5-point face template of ArcFace-style alignment, in a 112x112 crop (x, y): eye centres,
# nose tip, mouth corners. DeepfakeBench aligns to it (its 96-px-wide copy shifted by x + 8).
TEMPLATE_112 = np.array([
    [38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041],
])
# CADDM's 5-point mean face: same points, centred on the face, normalised coordinates.
MEAN_FACE = np.array([
    [-0.17607, -0.172844], [0.1736, -0.17356], [-0.00182, 0.0357164], [-0.14617, 0.20185], [0.14496, 0.19943],
])
MEAN_FACE_EYE_DISTANCE = float(MEAN_FACE[1, 0] - MEAN_FACE[0, 0])
CADDM_EYE_DISTANCE = 80 / 224  # eye distance as a share of the crop side at zoom 1 (80 px of 224)
CADDM_EYE_LINE = 1 / 2.42  # CADDM puts the eye line at this share of the crop height, whatever the zoom
# A 5-point dlib shape has eye corners and the nose base (subnasale); the tip sits this share of the
# way from the base up to the eye midpoint (0.22 measured on dlib 68-point shapes of a frontal face).
NOSE_TIP_SHARE = 0.2
# The shape points DeepfakeBench's `get_keypts` fits to that template (0-based iBUG indices): the upper
# eyelids 37 and 44, the nose tip 30 and the outer-lip points 49 and 55 beside the mouth corners.
DEEPFAKEBENCH_POINTS = (37, 44, 30, 49, 55)
# Presets that fit 5 points to a template (the others crop a box).
TEMPLATE_PRESETS = ("deepfakebench", "arcface5", "caddm")


@dataclass(frozen=True)
class AlignedFace:
    """A face crop with the matrix that made it and the landmarks it carries."""

    crop: np.ndarray  # (size, size, 3) RGB uint8
    matrix: np.ndarray  # (2, 3) float64, frame pixels → crop pixels
    landmarks: np.ndarray  # float32 (N, 2), frame landmarks mapped into crop pixels
    context: np.ndarray | None = None  # wider crop, same centre and zoom, when context_scale > 0
    context_matrix: np.ndarray | None = None


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points, float32 out."""
    points = np.asarray(points, dtype=np.float64)
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation src → dst (Umeyama's fit, closed form in 2D)."""
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - src_mean, dst - dst_mean
    spread = float((a ** 2).sum())
    if spread <= 1e-12:
        raise ValueError("similarity_matrix: source points all coincide")
    cos_part = float((a * b).sum()) / spread  # scale × cos(angle)
    sin_part = float((a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum()) / spread  # scale × sin(angle)
    rotation = np.array([[cos_part, -sin_part], [sin_part, cos_part]])
    return np.hstack([rotation, (dst_mean - rotation @ src_mean)[:, None]])


def five_points_from_dlib5(points: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip and mouth corners estimated from dlib's 5-point shape (eye corners, nose base).

    The mouth corners are the template's, placed by the similarity that fits eyes and nose.
    """
    left_eye, right_eye = points[2:4].mean(axis=0), points[0:2].mean(axis=0)
    eye_mid = 0.5 * (left_eye + right_eye)
    nose_tip = points[4] + NOSE_TIP_SHARE * (eye_mid - points[4])
    known = np.stack([left_eye, right_eye, nose_tip])
    to_face = similarity_matrix(TEMPLATE_112[:3], known)
    mouth = transform_points(TEMPLATE_112[3:], to_face)
    return np.vstack([known, mouth]).astype(np.float32)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """The arcface5 points (left eye centre, right eye centre, nose tip, mouth corners), float32 (5, 2).

    They are what the ArcFace template marks. 68-point shapes and 81-point ones (68 standard points +
    forehead) use the iBUG indices; a dlib 5-point shape is completed by `five_points_from_dlib5`.
    """
    points = np.asarray(landmarks, dtype=np.float32)
    if points.shape == (5, 2):
        return five_points_from_dlib5(points)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 68:
        raise ValueError(f"five_points: expected 5, 68 or more (x, y) landmarks, got shape {points.shape}")
    return np.stack([points[36:42].mean(axis=0), points[42:48].mean(axis=0),
                     points[30], points[48], points[54]]).astype(np.float32)


def caddm_five_points(landmarks: np.ndarray) -> np.ndarray:
    """CADDM's five points: as `five_points`, but the eye centres truncated to whole pixels.

    CADDM's `align_5p` casts the eye centres to int before the fit; doing the same keeps the crop within
    0.001 px of its own (without it: 0.25-0.96 px apart on ffpp-mini). 5-point shapes are left as they are.
    """
    points = five_points(landmarks)
    if np.asarray(landmarks).shape[0] >= 68:
        points[:2] = np.trunc(points[:2])
    return points


def deepfakebench_points(landmarks: np.ndarray) -> np.ndarray:
    """The 5 shape points DeepfakeBench aligns with (eyelids, nose tip, outer lip), float32 (5, 2).

    They need a 68- or 81-point shape (the 81-point model keeps iBUG's first 68): a 5-point shape has
    no eyelids or lips, so it is refused rather than guessed.
    """
    points = np.asarray(landmarks, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 68:
        raise ValueError(f"the deepfakebench preset needs 68 or 81 (x, y) landmarks, got shape {points.shape}"
                         " (use alignment.preset=arcface5 with 5-point shapes)")
    return points[list(DEEPFAKEBENCH_POINTS)]


def alignment_points(preset: str, landmarks: np.ndarray) -> np.ndarray:
    """The 5 frame points a template preset fits: DeepfakeBench's shape points, or eye centres etc."""
    if preset == "deepfakebench":
        return deepfakebench_points(landmarks)
    return caddm_five_points(landmarks) if preset == "caddm" else five_points(landmarks)


def template_points(preset: str, size: int, scale: float) -> np.ndarray:
    """Where a preset puts the 5 alignment points in a `size`-px crop, float64 (5, 2).

    deepfakebench and arcface5: the 112-px template scaled to `size`, then shrunk towards the centre
    by 1/`scale` (1.3 = a 30% margin; DeepfakeBench's `img_align_crop` adds the margin on each side,
    then scales back to `size`, which is the same map). caddm: the mean face zoomed so the eyes are
    `scale` × 80/224 of the crop apart, eye line at 1/2.42 of the height; its vertical spread follows
    from that (so it is taller than a similarity of the mean face, and the fit spreads the difference).
    """
    if preset in ("deepfakebench", "arcface5"):
        centre = size / 2
        return centre + (TEMPLATE_112 * (size / 112) - centre) / scale
    if preset == "caddm":
        zoom = scale * CADDM_EYE_DISTANCE / MEAN_FACE_EYE_DISTANCE
        spread = MEAN_FACE * zoom + 0.5  # shares of the crop side, before the eye-line fix
        points = np.empty_like(MEAN_FACE)
        points[:, 0] = spread[:, 0] * size
        points[:, 1] = spread[:, 1] * size * CADDM_EYE_LINE / spread[0, 1]
        return points
    raise ValueError(f"template_points: preset {preset!r} has no 5-point template ({', '.join(TEMPLATE_PRESETS)})")


def box_matrix(box: Sequence[float], size: int, scale: float) -> np.ndarray:
    """Scale + translation mapping a box, made square and grown by `scale`, onto the `size`-px crop."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * scale
    if side <= 0:
        raise ValueError(f"box_matrix: empty box {tuple(box)}")
    zoom = size / side
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    return np.array([[zoom, 0.0, size / 2 - zoom * cx], [0.0, zoom, size / 2 - zoom * cy]])


def landmark_box(landmarks: np.ndarray, box: Sequence[float]) -> tuple[float, float, float, float]:
    """The box preset's face extent: the landmarks' bounds, or the detector box for 5-point shapes."""
    points = np.asarray(landmarks, dtype=np.float64)
    if len(points) <= 5:
        return tuple(float(v) for v in box)  # eye corners and nose do not span the face
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def alignment_matrix(landmarks: np.ndarray, box: Sequence[float], config: AlignmentConfig) -> np.ndarray:
    """The frame → crop matrix of the configured preset."""
    if config.preset == "box":
        return box_matrix(landmark_box(landmarks, box), config.size, config.scale)
    return similarity_matrix(alignment_points(config.preset, landmarks),
                             template_points(config.preset, config.size, config.scale))


def context_size(size: int, context_scale: float) -> int:
    """Side of the context crop: the face crop's pixel density over `context_scale` × its extent.

    Rounded so the face crop sits on whole pixels in the middle of it (the margin is an integer).
    """
    return size + 2 * int(round(size * (context_scale - 1) / 2))


def context_matrix(matrix: np.ndarray, size: int, context_scale: float) -> tuple[np.ndarray, int]:
    """The matrix and side of a wider crop around the face crop, at the same zoom (nothing squeezed).

    The face crop is the context crop's centre: context pixel (x + m, y + m) is face-crop pixel (x, y),
    with m = (context side - size) / 2, so random crops cut from it lose no resolution.
    """
    side = context_size(size, context_scale)
    margin = (side - size) / 2
    return matrix + np.array([[0.0, 0.0, margin], [0.0, 0.0, margin]]), side


def warp(image: Picture, matrix: np.ndarray, size: int) -> np.ndarray:
    """One bilinear warp of the frame into a `size`-px crop, black outside the frame (of a decoded frame's
    pixels, only the region the crop reads is converted)."""
    return cv2.warpAffine(pixels_in(image, source_region(matrix, size)), matrix, (size, size),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def source_region(matrix: np.ndarray, size: int) -> Region:
    """The frame pixels a `size`-px crop by `matrix` reads: its corners mapped back, plus bilinear's neighbour."""
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
    inverse = cv2.invertAffineTransform(matrix.astype(np.float64))
    source = corners @ inverse[:, :2].T + inverse[:, 2]
    (x0, y0), (x1, y1) = np.floor(source.min(axis=0)) - 2, np.ceil(source.max(axis=0)) + 2
    return int(x0), int(y0), int(x1), int(y1)


def align_face(image: Picture, landmarks: np.ndarray, box: Sequence[float],
               config: AlignmentConfig) -> AlignedFace:
    """Crop one face from a full RGB frame per the alignment preset, carrying its landmarks along."""
    matrix = alignment_matrix(landmarks, box, config)
    crop = warp(image, matrix, config.size)
    crop_landmarks = transform_points(landmarks, matrix)
    if config.context_scale <= 0:
        return AlignedFace(crop, matrix, crop_landmarks)
    wide, side = context_matrix(matrix, config.size, config.context_scale)
    return AlignedFace(crop, matrix, crop_landmarks, warp(image, wide, side), wide)
