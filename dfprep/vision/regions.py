"""The landmark prior: a model-free primary-region map from the landmarks stored with each crop.

A map is an (H, W) float32 array in [0, 1] indexed like its crop (``map[row, col] ↔ crop[row, col]``); it
needs only numpy and OpenCV. The PNG codec lives in dfprep.io.regionmaps, Grad-CAM in dfprep.torch.cam.
"""

from __future__ import annotations

from typing import Mapping

import cv2
import numpy as np

from dfprep.errors import RegionMapError

# 68-point (iBUG 300-W) indices of each facial part; a region's weight applies to all of its parts.
REGION_PARTS_68: dict[str, tuple[tuple[int, ...], ...]] = {
    "eyes": (tuple(range(36, 42)), tuple(range(42, 48))),
    "eyebrows": (tuple(range(17, 22)), tuple(range(22, 27))),
    "nose": (tuple(range(27, 36)),),
    "mouth": (tuple(range(48, 68)),),
}
DEFAULT_WEIGHTS: dict[str, float] = {"eyes": 1.0, "mouth": 0.9, "nose": 0.7}
DEFAULT_BLUR_SIGMA = 4.0  # pixels, for a 256-px crop: softens hull edges without bridging the parts


# ---------------------------------------------------------------- landmark prior


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Region weights must name known parts and lie in [0, 1], so the map stays in [0, 1]."""
    unknown = sorted(set(weights) - set(REGION_PARTS_68))
    if unknown:
        raise RegionMapError(f"unknown region(s) {unknown}: use {sorted(REGION_PARTS_68)}")
    bad = {name: value for name, value in weights.items() if not 0.0 <= float(value) <= 1.0}
    if bad:
        raise RegionMapError(f"region weights must lie in [0, 1], got {bad}")
    return {name: float(value) for name, value in weights.items()}


def parse_weights(text: str) -> dict[str, float]:
    """`eyes=1,mouth=0.9,nose=0.7` → a checked weight dict (the CLI's --weights)."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise RegionMapError(f"--weights: expected REGION=WEIGHT items, got {item!r}")
    return check_weights(weights)


def landmark_prior_map(landmarks: np.ndarray, size: tuple[int, int], weights: Mapping[str, float] = DEFAULT_WEIGHTS,
                       blur_sigma: float = DEFAULT_BLUR_SIGMA) -> np.ndarray:
    """Filled hulls of the weighted facial parts, each smoothed on its own, max where they overlap; float32 in [0, 1].

    Works from the landmarks stored with the crop (68 points, or 81 whose first 68 are iBUG's): nothing is
    re-detected. Each region is blurred separately and rescaled to peak at its weight, so a small region
    (the eyes) keeps its weight instead of being diluted below a large one (the mouth).
    """
    points = np.asarray(landmarks, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 68:
        raise RegionMapError(f"landmark prior needs (68+, 2) iBUG landmarks, got shape {points.shape}")
    canvas = np.zeros(size, np.float32)
    for name, weight in check_weights(weights).items():
        parts = [points[list(part)] for part in REGION_PARTS_68[name]]
        window = _region_window(parts, size, blur_sigma) if weight > 0 else None
        if window is None:
            continue
        top, left, bottom, right = window
        region = np.zeros((bottom - top, right - left), np.float32)
        for part in parts:
            _fill_hull(region, part - np.array([left, top], np.float32), 1.0)
        view = canvas[top:bottom, left:right]
        np.maximum(view, weight * smooth_keeping_peak(region, blur_sigma), out=view)
    return canvas


def _region_window(parts: list[np.ndarray], size: tuple[int, int], sigma: float) -> tuple[int, int, int, int] | None:
    """Rows/columns a region can touch once blurred (its box plus the kernel radius), clipped to the crop.

    Drawing and blurring only there gives the same pixels as doing it on the whole crop, several times faster.
    """
    finite = np.concatenate([p[np.isfinite(p).all(axis=1)] for p in parts])
    if len(finite) < 3:
        return None
    margin = int(np.ceil(4 * sigma)) + 2 if sigma > 0 else 1  # OpenCV's float kernel reaches 4σ
    left, top = np.floor(finite.min(axis=0)).astype(int) - margin
    right, bottom = np.ceil(finite.max(axis=0)).astype(int) + margin + 1
    top, left = max(top, 0), max(left, 0)
    bottom, right = min(bottom, size[0]), min(right, size[1])
    return (top, left, bottom, right) if bottom > top and right > left else None


def _fill_hull(canvas: np.ndarray, points: np.ndarray, value: float) -> None:
    """Paint the convex hull of (x, y) points (x = column, y = row); non-finite points are ignored."""
    finite = points[np.isfinite(points).all(axis=1)]
    if len(finite) < 3:
        return
    hull = cv2.convexHull(np.round(finite * 16).astype(np.int32))  # 4 fractional bits: sub-pixel outlines
    cv2.fillConvexPoly(canvas, hull, float(value), lineType=cv2.LINE_8, shift=4)


def smooth_keeping_peak(canvas: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur that preserves the map's maximum (so a region's weight survives smoothing)."""
    peak = float(canvas.max())
    if sigma <= 0 or peak <= 0:
        return canvas
    blurred = cv2.GaussianBlur(canvas, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    top = float(blurred.max())
    if top > 0:
        blurred *= peak / top
    return np.clip(blurred, 0.0, 1.0, out=blurred)
