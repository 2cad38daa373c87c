"""Seeded augmentations on FaceShards sample dicts, including PRLE's primary-region erasing (no torchvision).

Every transform takes the sample dict (``image`` float CHW in [0, 1], optional ``landmarks`` (N, 2) as
(x, y) crop pixels and ``map`` (H, W) in [0, 1]) and an optional ``torch.Generator``: given the same
generator state the result is identical. FaceShards passes one generator per reader, seeded from
(seed, epoch, reader); used on their own, transforms draw from a generator seeded by their ``seed``.
Put the erasing transforms before ``Normalize``: their fills are in [0, 1] image units.
"""

from __future__ import annotations

import math
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np

from dfprep.torch._require import require_torch

torch = require_torch()
F = torch.nn.functional

Sample = dict[str, Any]
FILLS = ("noise", "zero", "mean")
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma
LANDMARK_REGIONS_68 = {  # 68-point (iBUG 300-W) indices of each facial part
    "eyes": (tuple(range(36, 42)), tuple(range(42, 48))),
    "nose": (tuple(range(27, 36)),),
    "mouth": (tuple(range(48, 68)),),
}
# PRLE's landmark ablation (its dataset/ImageFolder.py) draws random.randint(0, 3): 0 nose, 1 eyes, 2 and 3 mouth.
PRLE_REGION_WEIGHTS = MappingProxyType({"nose": 0.25, "eyes": 0.25, "mouth": 0.5})
# The 81-point predictor (codeniko/shape_predictor_81_face_landmarks) keeps iBUG's 68 points and adds 13 on
# the forehead, numbered out of order: from the image's left to its right they are (its reference picture)
FOREHEAD_81_LEFT_TO_RIGHT = (77, 75, 76, 68, 69, 70, 71, 80, 72, 73, 79, 74, 78)
# dlib's 5-point shape: 0-1 the image-right eye's outer and inner corner, 2-3 the image-left eye's, 4 the nose.
MIRROR_PAIRS_5 = [(0, 2), (1, 3)]


def _mirror_pairs_68() -> list[tuple[int, int]]:
    """Index pairs that swap under a horizontal flip of the 68-point layout (left part ↔ right part)."""
    pairs = [(i, 16 - i) for i in range(8)]  # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48 + i, 54 - i) for i in range(3)] + [(55, 59), (56, 58)]  # outer lips
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips
    return pairs


def _mirror_pairs_81() -> list[tuple[int, int]]:
    """The 68-point pairs plus the forehead: the k-th point from the left swaps with the k-th from the right."""
    row = FOREHEAD_81_LEFT_TO_RIGHT
    return _mirror_pairs_68() + [(row[k], row[-1 - k]) for k in range(len(row) // 2)]


def mirror_order(count: int) -> list[int]:
    """Where each landmark comes from after a flip (5, 68 or 81 points), so each index keeps its facial part."""
    return list(_mirror_order(count))


@lru_cache(maxsize=None)
def _mirror_order(count: int) -> tuple[int, ...]:
    """mirror_order, built once per layout (a flip runs on every other training sample)."""
    pairs = {5: MIRROR_PAIRS_5, 68: _mirror_pairs_68(), 81: _mirror_pairs_81()}.get(count)
    if pairs is None:
        raise ValueError(f"cannot mirror a {count}-point shape: known layouts have 5, 68 or 81 points")
    order = list(range(count))
    for left, right in pairs:
        order[left], order[right] = right, left
    return tuple(order)


def mirror_order_68() -> list[int]:
    """Where each 68-point landmark comes from after a flip, so point 36 is still the subject's same eye corner."""
    return mirror_order(68)


class SampleTransform:
    """Base for seeded transforms: draw randomness only from the generator handed in (or an own seeded one)."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._own: Any = None

    def generator(self, generator: Any = None) -> Any:
        """The generator to draw from: the caller's, else this transform's own, seeded once."""
        if generator is not None:
            return generator
        if self._own is None:
            self._own = torch.Generator().manual_seed(self.seed)
        return self._own

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (for DataLoader workers) without the generator object."""
        return {**self.__dict__, "_own": None}

    def __call__(self, sample: Sample, generator: Any = None) -> Sample:
        raise NotImplementedError


def apply_transform(transform: Callable[..., Sample], sample: Sample, generator: Any) -> Sample:
    """Run a transform: ours get the reader's generator, any other callable just the sample."""
    if isinstance(transform, SampleTransform):
        return transform(sample, generator)
    return transform(sample)


def uniform(generator: Any, low: float, high: float) -> float:
    """One float drawn from U(low, high)."""
    return low + (high - low) * float(torch.rand((), generator=generator))


def chance(generator: Any, p: float) -> bool:
    """True with probability p; always draws one number so the stream stays aligned whatever p is."""
    return float(torch.rand((), generator=generator)) < p


class Compose(SampleTransform):
    """Apply transforms in order, all drawing from one generator."""

    def __init__(self, transforms: Sequence[Callable[..., Sample]], seed: int = 0):
        super().__init__(seed)
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, generator: Any = None) -> Sample:
        """Thread the sample through every transform."""
        generator = self.generator(generator)
        for transform in self.transforms:
            sample = apply_transform(transform, sample, generator)
        return sample


def _check_fill(fill: str) -> str:
    """Refuse unknown fill modes at construction, not mid-epoch."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    return fill


def fill_pixels(image: Any, mask: Any, fill: str, generator: Any) -> Any:
    """A copy of the CHW image with the masked (H, W) pixels replaced by noise, zeros or the channel means."""
    erased = image.clone(memory_format=torch.contiguous_format)
    channels = erased.shape[0]
    planes, where = erased.numpy().reshape(channels, -1), mask.numpy().reshape(-1)  # views, no copies
    count = int(np.count_nonzero(where))
    if count == 0:
        return erased
    if fill == "noise":
        values = torch.rand((channels, count), generator=generator, dtype=image.dtype).numpy()
    elif fill == "zero":
        values = np.zeros((channels, 1), planes.dtype)
    else:
        values = planes.mean(axis=1, keepdims=True)
    for channel in range(channels):  # one flat boolean assignment per plane: several times faster than [:, mask]
        planes[channel][where] = values[channel]
    return erased


def primary_region_mask(region_map: Any, alpha: float, threshold: float) -> Any:
    """Pixels to erase: of the map pixels above threshold, the ⌊α·count⌋ highest (ties: row-major order).

    A selection (np.partition) finds the cut-off value instead of sorting every candidate.
    """
    flat = region_map.reshape(-1).numpy()
    above = flat > threshold
    candidates = flat[above]
    keep = int(math.floor(alpha * candidates.size))
    if keep == 0 or keep == candidates.size:
        return torch.from_numpy(above if keep else np.zeros_like(above)).reshape(region_map.shape)
    rank = candidates.size - keep
    cutoff = np.partition(candidates, rank)[rank]  # the keep-th highest candidate value
    mask = flat > cutoff
    ties = keep - int(np.count_nonzero(mask))
    if ties > 0:
        mask[np.flatnonzero(flat == cutoff)[:ties]] = True
    return torch.from_numpy(mask).reshape(region_map.shape)


def map_at_image_size(region_map: Any, size: tuple[int, int]) -> Any:
    """The map resized (bilinear) to the image's H×W when the two differ."""
    if tuple(region_map.shape) == tuple(size):
        return region_map
    return F.interpolate(region_map[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]


class PrimaryRegionErasing(SampleTransform):
    """PRLE's dynamic exploitation: with probability p erase the top α∈U(ratio) of the primary-region map.

    The map is indexed like the image, ``map[row, col] ↔ image[:, row, col]`` (PRLE's released code
    transposed the mask, erasing the mirrored-across-the-diagonal region instead).
    """

    def __init__(self, p: float = 0.5, ratio: tuple[float, float] = (0.5, 1.0), threshold: float = 0.3,
                 fill: str = "noise", seed: int = 0):
        super().__init__(seed)
        if not 0.0 <= ratio[0] <= ratio[1] <= 1.0:
            raise ValueError(f"ratio must satisfy 0 <= low <= high <= 1, got {ratio}")
        self.p, self.ratio, self.threshold, self.fill = p, tuple(ratio), threshold, _check_fill(fill)

    def __call__(self, sample: Sample, generator: Any = None) -> Sample:
        """Erase (or not) one sample's primary region."""
        generator = self.generator(generator)
        if not chance(generator, self.p):
            return sample
        if sample.get("map") is None:
            raise KeyError("PrimaryRegionErasing needs sample['map']: stream with FaceShards(..., maps=NAME)")
        alpha = uniform(generator, *self.ratio)
        image = sample["image"]
        region_map = map_at_image_size(sample["map"], tuple(image.shape[-2:]))
        mask = primary_region_mask(region_map, alpha, self.threshold)
        return {**sample, "image": fill_pixels(image, mask, self.fill, generator)}


def hull_mask(points: np.ndarray, size: tuple[int, int]) -> Any:
    """Filled convex hull of (x, y) points as an (H, W) bool mask (x is the column, y the row)."""
    canvas = np.zeros(size, np.uint8)
    hull = cv2.convexHull(np.round(points).astype(np.int32))
    cv2.fillConvexPoly(canvas, hull, 1)
    return torch.from_numpy(canvas.astype(bool))


class LandmarkRegionErasing(SampleTransform):
    """With probability p erase one facial part (eyes, nose or mouth) by its landmark hull.

    ``regions`` names the parts to draw from, uniformly, or maps each to its weight; the default is PRLE's
    landmark ablation (nose ¼, eyes ¼, mouth ½). Works on 68-point shapes and 81-point ones (their first
    68 points are iBUG's). Each eye is its own hull (PRLE's code takes one hull over both eyes, which
    also covers the bridge of the nose between them).
    """

    def __init__(self, p: float = 0.5, regions: Sequence[str] | Mapping[str, float] = PRLE_REGION_WEIGHTS,
                 fill: str = "noise", seed: int = 0):
        super().__init__(seed)
        weights = dict(regions) if isinstance(regions, Mapping) else {name: 1.0 for name in regions}
        unknown = set(weights) - set(LANDMARK_REGIONS_68)
        if unknown or not weights:
            raise ValueError(f"regions must be among {sorted(LANDMARK_REGIONS_68)}, got {list(weights)}")
        if any(not math.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"region weights must be finite, >= 0 and not all 0, got {weights}")
        self.p, self.fill = p, _check_fill(fill)
        self.regions = tuple(weights)
        self.weights = torch.tensor([weights[name] for name in self.regions], dtype=torch.float64)

    def __call__(self, sample: Sample, generator: Any = None) -> Sample:
        """Erase (or not) one part of one face."""
        generator = self.generator(generator)
        if not chance(generator, self.p):
            return sample
        landmarks = np.asarray(sample["landmarks"], dtype=np.float32)
        if landmarks.shape not in ((68, 2), (81, 2)):
            raise ValueError(f"LandmarkRegionErasing needs 68 or 81 (x, y) landmarks, got shape {landmarks.shape}")
        region = self.regions[int(torch.multinomial(self.weights, 1, generator=generator))]
        image = sample["image"]
        mask = torch.zeros(tuple(image.shape[-2:]), dtype=torch.bool)
        for part in LANDMARK_REGIONS_68[region]:
            mask |= hull_mask(landmarks[list(part)], tuple(image.shape[-2:]))
        return {**sample, "image": fill_pixels(image, mask, self.fill, generator)}


class RandomHorizontalFlip(SampleTransform):
    """Mirror image, map and landmarks together (x → W-1-x; 5-, 68- and 81-point indices re-ordered left↔right)."""

    def __init__(self, p: float = 0.5, seed: int = 0):
        super().__init__(seed)
        self.p = p

    def __call__(self, sample: Sample, generator: Any = None) -> Sample:
        """Flip (or not) every spatial member of the sample."""
        if not chance(self.generator(generator), self.p):
            return sample
        flipped = {**sample, "image": sample["image"].flip(-1)}
        if sample.get("map") is not None:
            flipped["map"] = sample["map"].flip(-1)
        if sample.get("landmarks") is not None:
            width = sample["image"].shape[-1]
            points = sample["landmarks"].clone()
            points[:, 0] = (width - 1) - points[:, 0]
            flipped["landmarks"] = points[mirror_order(points.shape[0])]
        return flipped


def to_uint8_hwc(image: Any) -> np.ndarray:
    """CHW float [0, 1] → HWC uint8 RGB for OpenCV."""
    return np.ascontiguousarray((image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def from_uint8_hwc(array: np.ndarray) -> Any:
    """HWC uint8 RGB → CHW float [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float().div_(255)


class JpegRecompression(SampleTransform):
    """With probability p re-encode the face as JPEG at a quality drawn from the range (compression robustness)."""

    def __init__(self, quality: tuple[int, int] = (30, 95), p: float = 0.5, seed: int = 0):
        super().__init__(seed)
        if not 1 <= quality[0] <= quality[1] <= 100:
            raise ValueError(f"quality must satisfy 1 <= low <= high <= 100, got {quality}")
        self.quality, self.p = tuple(quality), p

    def __call__(self, sample: Sample, generator: Any = None) -> Sample:
        """Round-trip the image through OpenCV's JPEG codec."""
        generator = self.generator(generator)
        if not chance(generator, self.p):
            return sample
        quality = int(torch.randint(self.quality[0], self.quality[1] + 1, (), generator=generator))
        bgr = cv2.cvtColor(to_uint8_hwc(sample["image"]), cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("OpenCV could not JPEG-encode the image")
        decoded = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return {**sample, "image": from_uint8_hwc(decoded)}


class GaussianBlur(SampleTransform):
    """With probability p blur the face with σ drawn from the range (resolution/compression robustness)."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0), p: float = 0.5, seed: int = 0):
        super().__init__(seed)
        if not 0 < sigma[0] <= sigma[1]:
            raise ValueError(f"sigma must satisfy 0 < low <= high, got {sigma}")
        self.sigma, self.p = tuple(sigma), p

    def __call__(self, sample: Sample, generator: Any = None) -> Sample:
        """Blur every channel with one σ (OpenCV picks the kernel size from σ)."""
        generator = self.generator(generator)
        if not chance(generator, self.p):
            return sample
        sigma = uniform(generator, *self.sigma)
        hwc = np.ascontiguousarray(sample["image"].permute(1, 2, 0).numpy())
        blurred = cv2.GaussianBlur(hwc, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
        blurred = blurred.reshape(hwc.shape)  # OpenCV drops a single channel axis
        return {**sample, "image": torch.from_numpy(np.ascontiguousarray(blurred.transpose(2, 0, 1)))}


class ColorJitter(SampleTransform):
    """Scale brightness, contrast and saturation by factors drawn from [1-x, 1+x] (in that order)."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2, p: float = 1.0,
                 seed: int = 0):
        super().__init__(seed)
        if min(brightness, contrast, saturation) < 0:
            raise ValueError("jitter strengths must be >= 0")
        self.brightness, self.contrast, self.saturation, self.p = brightness, contrast, saturation, p

    def __call__(self, sample: Sample, generator: Any = None) -> Sample:
        """Jitter one image; the result stays in [0, 1]."""
        generator = self.generator(generator)
        if not chance(generator, self.p):
            return sample
        factors = [uniform(generator, 1 - s, 1 + s) for s in (self.brightness, self.contrast, self.saturation)]
        return {**sample, "image": jitter_colors(sample["image"], *factors)}


def jitter_colors(image: Any, brightness: float, contrast: float, saturation: float) -> Any:
    """Brightness, then contrast about the mean gray, then saturation about each pixel's gray, in one pass.

    The three steps are affine in the pixel and its gray value g, so they collapse to
    out = b·c·s·x + b·c·(1-s)·g + b·(1-c)·mean(g): one gray image and one fused add instead of ten passes.
    """
    channels, height, width = image.shape
    weights = torch.tensor(GRAY_WEIGHTS, dtype=image.dtype)
    gray = (weights @ image.reshape(channels, -1)).reshape(1, height, width)
    offset = brightness * (1 - contrast) * float(gray.mean())
    base = gray.mul_(brightness * contrast * (1 - saturation)).add_(offset)
    return torch.add(base, image, alpha=brightness * contrast * saturation).clamp_(0, 1)


class Normalize(SampleTransform):
    """Per-channel (image - mean) / std, the last step before the model."""

    def __init__(self, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)):
        super().__init__(0)
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.scale = 1.0 / torch.tensor(list(std), dtype=torch.float32)[:, None, None]
        self.shift = -torch.tensor(list(mean), dtype=torch.float32)[:, None, None] * self.scale

    def __call__(self, sample: Sample, generator: Any = None) -> Sample:
        """Normalise the image (no randomness) as one fused multiply-add."""
        return {**sample, "image": torch.addcmul(self.shift, sample["image"], self.scale)}


# CADDM ("Implicit Identity Leakage", CVPR 2023) training augmentation, re-implemented from its public code
# (lib/data_preprocess/preprocess.py prepare_train_input, mfs.py, cropface.py get_align5p, augmentor.py).
# The shards hold what its code reads from full frames: the fake crop, the original's frame registered with
# the fake's matrix, and both as full-density context crops (FaceShards(..., pairs=True, context=True)).
CADDM_MEAN_FACE = np.array([[-0.17607, -0.172844], [0.1736, -0.17356], [-0.00182, 0.0357164],
                            [-0.14617, 0.20185], [0.14496, 0.19943]])  # eyes, nose tip, mouth corners
CADDM_EYE_DISTANCE_UNITS = 0.34967  # the mean face's eye distance: CADDM's face_width is measured in it
CADDM_EYE_LINE = 1 / 2.42  # CADDM keeps the eye line at this share of the crop height, whatever the scale
CADDM_WINDOWS = ((40, 80), (80, 120), (120, 160), (224, 224))  # partial-swap windows (h, w) in 224-px units
SWAP_KINDS = ("real", "none", "global", "partial")


def caddm_template(size: int, scale: float, face_width: float = 80.0) -> np.ndarray:
    """Where CADDM's crop puts the five points (its get_mean_face): eyes `face_width`·scale/224·size apart."""
    zoom = scale * (face_width / 224) / CADDM_EYE_DISTANCE_UNITS
    spread = CADDM_MEAN_FACE * zoom + 0.5
    points = np.empty_like(spread)
    points[:, 0] = spread[:, 0] * size
    points[:, 1] = spread[:, 1] * size * CADDM_EYE_LINE / spread[0, 1]
    return points


def face_five_points(landmarks: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip and mouth corners of a 68- or 81-point shape (iBUG indices)."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] < 68 or points.shape[1] != 2:
        raise ValueError(f"CADDM's crop needs 68 or 81 (x, y) landmarks, got shape {points.shape}")
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])


def caddm_five_points(sample: Sample) -> np.ndarray:
    """The five points CADDM fits, in the sample image's pixels.

    CADDM truncates the eye centres to whole *frame* pixels; with the frame landmarks and the frame → image
    matrix (FaceShards yields both with pairs or context) the same truncated points are carried into the image.
    """
    if sample.get("frame_landmarks") is None or sample.get("frame_matrix") is None:
        return face_five_points(np.asarray(sample["landmarks"]))
    five = face_five_points(np.asarray(sample["frame_landmarks"]))
    five[:2] = np.trunc(five[:2])
    matrix = np.asarray(sample["frame_matrix"], np.float64)
    return five @ matrix[:, :2].T + matrix[:, 2]


def least_squares_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """3x3 rotation + uniform scale + shift taking `source` points closest to `target` (closed form)."""
    src, dst = source - source.mean(0), target - target.mean(0)
    norm = float((src ** 2).sum())
    a = float((src * dst).sum()) / norm
    b = float((src[:, 0] * dst[:, 1] - src[:, 1] * dst[:, 0]).sum()) / norm
    linear = np.array([[a, -b], [b, a]])
    shift = target.mean(0) - linear @ source.mean(0)
    return np.array([[a, -b, shift[0]], [b, a, shift[1]], [0.0, 0.0, 1.0]])


def caddm_crop_matrix(five: np.ndarray, size: int = 224, scale: float = 0.9,
                      shift: tuple[float, float] = (0.0, 0.0), rotation: float = 0.0, stretch_eyes: float = 1.0,
                      stretch_sides: float = 1.0, face_width: float = 80.0) -> np.ndarray:
    """CADDM's 3x3 image → crop matrix (its align_5p) from the five points: fit, rotate, then stretch and shift.

    The stretch moves the eye/mouth quadrilateral apart (eyes by `stretch_eyes`, mouth by its inverse; left
    side by `stretch_sides`, right by its inverse), so with stretches ≠ 1 the matrix is a true perspective.
    """
    template = caddm_template(size, scale, face_width)
    fit = least_squares_similarity(np.asarray(five, np.float64), template)
    turn = np.vstack([cv2.getRotationMatrix2D((size / 2, size / 2), rotation, 1.0), [0.0, 0.0, 1.0]])
    quad = template[[0, 1, 3, 4]]
    moved = quad.copy()
    for (i, j), factor in (((0, 1), stretch_eyes), ((2, 3), 1 / stretch_eyes), ((0, 2), stretch_sides),
                           ((1, 3), 1 / stretch_sides)):
        middle, half = (moved[i] + moved[j]) / 2, (moved[i] - moved[j]) / 2
        moved[i], moved[j] = middle + half * factor, middle - half * factor
    stretch = cv2.getPerspectiveTransform(quad.astype(np.float32), (moved + np.asarray(shift)).astype(np.float32))
    return stretch @ turn @ fit


def perspective_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, 2) points through a 3x3 matrix, with the perspective division."""
    moved = cv2.perspectiveTransform(np.asarray(points, np.float64).reshape(-1, 1, 2), matrix)
    return moved.reshape(-1, 2)


def moved_box(box: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The bounding box of a box's corners through a matrix, clipped to the crop; zeros when nothing is left."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        return np.zeros(4, np.float32)
    corners = perspective_points(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]), matrix)
    low, high = np.clip(corners.min(0), 0, size), np.clip(corners.max(0), 0, size)
    if (high - low).min() <= 0:
        return np.zeros(4, np.float32)
    return np.array([low[0], low[1], high[0], high[1]], np.float32)


def warp_chw(image: Any, matrix: np.ndarray, size: int) -> Any:
    """One bilinear perspective warp of a CHW float image into a size×size crop, black outside (as CADDM)."""
    hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    warped = cv2.warpPerspective(hwc, matrix, (size, size), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    warped = warped.reshape(size, size, -1)
    return torch.from_numpy(np.ascontiguousarray(warped.transpose(2, 0, 1)))


class CaddmRandomCrop(SampleTransform):
    """CADDM's face crop from landmarks with its training jitter (get_align5p), on an image and its pair.

    Scale ~ N(0.9, 0.1), shift U(-25, 25)² px, rotation 30·U(-1, 1)³ degrees, and with probability 0.2 each
    a ±3% stretch; ``train=False`` gives the plain crop at scale 0.9. Feed it the context crops
    (``FaceShards(..., pairs=True, context=True)``): they hold the face at full density with room around it,
    so the jittered crop rarely reaches past their edge. ``image``, ``original``, ``landmarks`` and
    ``swap_box`` move together; the five fitted points come from ``frame_landmarks``/``frame_matrix`` when
    the sample has them (eye centres truncated in frame pixels, as CADDM), else from ``landmarks``.
    ``frame_matrix`` becomes 3x3 (frame → crop, a perspective map when stretched).
    """

    def __init__(self, size: int = 224, scale: tuple[float, float] = (0.9, 0.1), shift: float = 25.0,
                 rotation: float = 30.0, stretch: tuple[float, float] = (0.97, 1.03), stretch_p: float = 0.2,
                 face_width: float = 80.0, train: bool = True, seed: int = 0):
        super().__init__(seed)
        self.size, self.scale, self.shift, self.rotation = size, tuple(scale), shift, rotation
        self.stretch, self.stretch_p, self.face_width, self.train = tuple(stretch), stretch_p, face_width, train

    def jitter(self, generator: Any) -> dict[str, Any]:
        """One draw of the crop parameters (CADDM's distributions)."""
        if not self.train:
            return {"scale": self.scale[0]}
        scale = self.scale[0] + self.scale[1] * float(torch.randn((), generator=generator))
        shift = (uniform(generator, -self.shift, self.shift), uniform(generator, -self.shift, self.shift))
        rotation = self.rotation * uniform(generator, -1, 1) ** 3
        eyes = uniform(generator, *self.stretch) if chance(generator, self.stretch_p) else 1.0
        sides = uniform(generator, *self.stretch) if chance(generator, self.stretch_p) else 1.0
        return {"scale": scale, "shift": shift, "rotation": rotation, "stretch_eyes": eyes, "stretch_sides": sides}

    def __call__(self, sample: Sample, generator: Any = None) -> Sample:
        """Crop every spatial member of the sample with one drawn matrix."""
        params = self.jitter(self.generator(generator))
        matrix = caddm_crop_matrix(caddm_five_points(sample), self.size, face_width=self.face_width, **params)
        cropped = {**sample, "image": warp_chw(sample["image"], matrix, self.size), "crop_matrix": matrix}
        if sample.get("frame_matrix") is not None:
            frame_matrix = np.vstack([np.asarray(sample["frame_matrix"], np.float64), [0.0, 0.0, 1.0]])
            cropped["frame_matrix"] = torch.from_numpy((matrix @ frame_matrix).astype(np.float32))
        if sample.get("original") is not None:
            cropped["original"] = warp_chw(sample["original"], matrix, self.size)
        cropped["landmarks"] = torch.from_numpy(
            perspective_points(np.asarray(sample["landmarks"]), matrix).astype(np.float32))
        if sample.get("swap_box") is not None:
            cropped["swap_box"] = torch.from_numpy(moved_box(np.asarray(sample["swap_box"]), matrix, self.size))
        return cropped


class RandomDownscale(SampleTransform):
    """With probability p halve the image and its pair (CADDM's resize_aug: frames at half resolution)."""

    def __init__(self, p: float = 0.3, factor: int = 2, seed: int = 0):
        super().__init__(seed)
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.p, self.factor = p, factor

    def __call__(self, sample: Sample, generator: Any = None) -> Sample:
        """Shrink image, original and landmarks together (bilinear, as CADDM's cv2.resize)."""
        if not chance(self.generator(generator), self.p):
            return sample
        shrunk = dict(sample)
        for key in ("image", "original"):
            if sample.get(key) is not None:
                hwc = np.ascontiguousarray(sample[key].permute(1, 2, 0).numpy())
                size = (hwc.shape[1] // self.factor, hwc.shape[0] // self.factor)
                small = cv2.resize(hwc, size, interpolation=cv2.INTER_LINEAR).reshape(size[1], size[0], -1)
                shrunk[key] = torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1)))
        if sample.get("landmarks") is not None:
            shrunk["landmarks"] = sample["landmarks"] / self.factor
        if sample.get("swap_box") is not None:
            shrunk["swap_box"] = sample["swap_box"] / self.factor
        if sample.get("frame_matrix") is not None:
            shrunk["frame_matrix"] = sample["frame_matrix"] / self.factor  # frame → the smaller image
        return shrunk


def face_hull_mask(landmarks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The filled convex hull of the landmarks as an (H, W) uint8 mask, 255 inside (CADDM's global swap mask)."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.asarray(landmarks, np.float32)).astype(np.int32), 255)
    return mask


def dssim_map(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per-pixel, per-channel structural dissimilarity (1 - SSIM) / 2 with an 11-px σ 1.5 Gaussian window."""
    a, b = first.astype(np.float64), second.astype(np.float64)
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5)  # noqa: E731
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mean_a, mean_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mean_a ** 2, blur(b * b) - mean_b ** 2
    covariance = blur(a * b) - mean_a * mean_b
    ssim = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / ((mean_a ** 2 + mean_b ** 2 + c1) * (var_a + var_b + c2))
    return np.abs((1 - ssim) / 2).reshape(first.shape)


def face_cut(landmarks: np.ndarray, shape: tuple[int, int], grow: float = 1.2) -> tuple[int, int, int, int]:
    """The landmarks' bounding box grown by `grow` about its top-left-shifted centre, clipped (CADDM's cut_face)."""
    low, high = np.asarray(landmarks).min(0).astype(int), np.asarray(landmarks).max(0).astype(int)
    width, height = int((high[0] - low[0]) * grow), int((high[1] - low[1]) * grow)
    x0 = int(low[0] - (high[0] - low[0]) * (grow - 1) // 2)
    y0 = int(low[1] - (high[1] - low[1]) * (grow - 1) // 2)
    return max(x0, 0), max(y0, 0), min(x0 + width, shape[1]), min(y0 + height, shape[0])


def most_different_window(dissimilarity: np.ndarray, height: int, width: int) -> tuple[int, int] | None:
    """Top-left (row, col) of the window with the largest summed dissimilarity, on a grid of fifths; None if all 0."""
    rows, cols = dissimilarity.shape[:2]
    totals = dissimilarity.reshape(rows, cols, -1).sum(2)
    best, where = 0.0, None
    for row in range(0, rows, max(rows // 5, 1)):
        for col in range(0, cols, max(cols // 5, 1)):
            if row + height <= rows and col + width <= cols:
                total = float(totals[row:row + height, col:col + width].sum())
                if total > best:
                    best, where = total, (row, col)
    return where


def partial_swap_box(fake: np.ndarray, original: np.ndarray, landmarks: np.ndarray, window: tuple[int, int],
                     units: int = 224) -> tuple[int, int, int, int] | None:
    """Where fake and original differ most inside the face: a window (h, w in `units` of the face cut), or None."""
    x0, y0, x1, y1 = face_cut(landmarks, fake.shape[:2])
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    dissimilarity = dssim_map(fake[y0:y1, x0:x1], original[y0:y1, x0:x1])
    dissimilarity[face_hull_mask(landmarks, fake.shape[:2])[y0:y1, x0:x1] == 0] = 0
    height = max(int(window[0] * (y1 - y0) / units), 1)
    width = max(int(window[1] * (x1 - x0) / units), 1)
    corner = most_different_window(dissimilarity, height, width)
    if corner is None:
        return None
    return x0 + corner[1], y0 + corner[0], x0 + corner[1] + width, y0 + corner[0] + height


def elastic_mask(mask: np.ndarray, alpha: float, sigma: float, noise: np.ndarray) -> np.ndarray:
    """The mask displaced by a smooth random field (CADDM's elastic_transform); `noise` is (2, H, W) in [-1, 1]."""
    rows, cols = mask.shape
    smooth = [cv2.GaussianBlur(n.astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REFLECT) * alpha
              for n in noise]
    grid_x, grid_y = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
    return cv2.remap(mask.astype(np.float32), grid_x + smooth[0], grid_y + smooth[1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def alpha_blend(background: np.ndarray, inserted: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """mask·inserted + (1 - mask)·background with the mask softened by a 5x5 σ 3 Gaussian (CADDM's alpha blend).

    The blur runs in the mask's own type, as CADDM's: a uint8 hull or window rounds, an elastic float mask not.
    """
    soft = cv2.GaussianBlur(mask, (5, 5), 3).astype(np.float32)[..., None] / 255.0
    return (soft * inserted + (1 - soft) * background).astype(np.uint8)


def poisson_blend(background: np.ndarray, inserted: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Poisson (seamless) cloning of the masked region in place: cv2.seamlessClone centred on the mask's box.

    OpenCV places the mask's bounding box centred on the given point, so the point is that box's own centre
    (x + w // 2, y + h // 2); CADDM's code passed (y, x) of the landmark extremes instead, which moves the face.
    """
    binary = np.where(mask >= 128, 255, 0).astype(np.uint8)
    x, y, width, height = cv2.boundingRect(binary)
    if width == 0 or height == 0:
        raise ValueError("empty blending mask")
    return cv2.seamlessClone(np.ascontiguousarray(inserted), np.ascontiguousarray(background), binary,
                             (x + width // 2, y + height // 2), cv2.NORMAL_CLONE)


class MultiScaleFacialSwap(SampleTransform):
    """CADDM's multi-scale facial swap on a fake and its registered original (its prepare_train_input + mfs.py).

    For a fake (label 1), with probability ``p_global`` (0.8) a global swap: half the time the original's face
    (landmark hull, elastically deformed with probability ``elastic_p``) goes onto the fake, a quarter of the
    time the fake's face onto the original, a quarter the fake stays as it is; else a partial swap: one window
    of ``windows`` (h, w in 224-px units of the face) is placed where fake and original differ most (DSSIM)
    inside the face, and the fake's pixels there go onto the original. Blending is Poisson
    (cv2.seamlessClone) or alpha, each with probability ½; a failed Poisson clone falls back to alpha.
    Sets ``image`` (the mix), ``swap_box`` (x0, y0, x1, y1 in image pixels: the window for a partial swap,
    the whole image otherwise, zeros for a real), ``swap`` (real, none, global, partial) and ``blending``.
    Reals pass through. Needs ``original`` and ``landmarks`` (FaceShards(..., pairs=True)).
    """

    def __init__(self, p_global: float = 0.8, p_poisson: float = 0.5, elastic_p: float = 0.5,
                 windows: Sequence[tuple[int, int]] = CADDM_WINDOWS, seed: int = 0):
        super().__init__(seed)
        if not windows or any(min(w) <= 0 for w in windows):
            raise ValueError(f"windows must be (height, width) pairs > 0, got {list(windows)}")
        self.p_global, self.p_poisson, self.elastic_p, self.windows = p_global, p_poisson, elastic_p, tuple(windows)

    def __call__(self, sample: Sample, generator: Any = None) -> Sample:
        """Mix one fake with its original (or pass a real through) and say where the swapped pixels are."""
        generator = self.generator(generator)
        if int(sample["label"]) == 0:
            return {**sample, "swap_box": torch.zeros(4), "swap": "real", "blending": ""}
        if sample.get("original") is None or sample.get("landmarks") is None:
            raise KeyError("MultiScaleFacialSwap needs sample['original'] and ['landmarks']: stream with "
                           "FaceShards(..., pairs=True)")
        fake, original = to_uint8_hwc(sample["image"]), to_uint8_hwc(sample["original"])
        landmarks = np.asarray(sample["landmarks"], np.float32)
        blending = "poisson" if chance(generator, self.p_poisson) else "alpha"
        if chance(generator, self.p_global):
            mixed, box, kind = self._global(fake, original, landmarks, blending, generator)
        else:
            mixed, box, kind = self._partial(fake, original, landmarks, blending, generator)
        blending = blending if kind != "none" else ""
        return {**sample, "image": from_uint8_hwc(mixed), "swap_box": torch.tensor(box, dtype=torch.float32),
                "swap": kind, "blending": blending}

    def _global(self, fake: np.ndarray, original: np.ndarray, landmarks: np.ndarray, blending: str,
                generator: Any) -> tuple[np.ndarray, list[float], str]:
        """A whole face from one image onto the other (or the fake as it is); the box is the whole image."""
        whole = [0.0, 0.0, float(fake.shape[1]), float(fake.shape[0])]
        direction = float(torch.rand((), generator=generator))
        if direction <= 0.5 and not chance(generator, 0.5):
            return fake, whole, "none"
        background, inserted = (fake, original) if direction > 0.5 else (original, fake)
        mask = face_hull_mask(landmarks, fake.shape[:2])
        if chance(generator, self.elastic_p):
            alpha = float(torch.randint(300, 501, (), generator=generator))
            noise = torch.rand((2, *mask.shape), generator=generator).numpy() * 2 - 1
            mask = elastic_mask(mask, alpha, mask.shape[0] * 0.08, noise)
        return self._blend(background, inserted, mask, blending), whole, "global"

    def _partial(self, fake: np.ndarray, original: np.ndarray, landmarks: np.ndarray, blending: str,
                 generator: Any) -> tuple[np.ndarray, list[float], str]:
        """The fake's most different window onto the original; the fake as it is when nothing differs."""
        window = self.windows[int(torch.randint(len(self.windows), (), generator=generator))]
        box = partial_swap_box(fake, original, landmarks, window)
        if box is None:
            return fake, [0.0, 0.0, float(fake.shape[1]), float(fake.shape[0])], "none"
        mask = np.zeros(fake.shape[:2], np.uint8)
        mask[box[1]:box[3], box[0]:box[2]] = 255
        return self._blend(original, fake, mask, blending), [float(v) for v in box], "partial"

    @staticmethod
    def _blend(background: np.ndarray, inserted: np.ndarray, mask: np.ndarray, blending: str) -> np.ndarray:
        """Poisson or alpha blending; a Poisson clone OpenCV refuses falls back to alpha, as in CADDM."""
        if blending == "poisson":
            try:
                return poisson_blend(background, inserted, mask)
            except (cv2.error, ValueError):
                pass
        return alpha_blend(background, inserted, mask)


def caddm_augmentation(seed: int = 0) -> Compose:
    """CADDM's training-time chain in its order: half resolution (p 0.3), multi-scale facial swap, jittered crop.

    Feed it ``FaceShards(..., pairs=True, context=True)`` samples. CADDM then adds colour, noise, blur and
    JPEG augmentations (its add_noise): append ColorJitter, GaussianBlur, JpegRecompression as wanted.
    """
    return Compose([RandomDownscale(p=0.3), MultiScaleFacialSwap(), CaddmRandomCrop()], seed=seed)
