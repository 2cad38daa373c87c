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
