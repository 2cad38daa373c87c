"""Primary-region maps: a model-free landmark prior, and PRLE's Grad-CAM fusion over a zoo of trained detectors.

A map is an (H, W) float32 array in [0, 1] indexed like its crop (``map[row, col] ↔ crop[row, col]``),
stored as an 8-bit grayscale PNG. The landmark prior needs only numpy and OpenCV; everything under
"Grad-CAM" imports torch lazily, so ``import dfprep.vision.regions`` works without it.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from dfprep.errors import DfprepError
from dfprep.io.payloads import PayloadError, decode_image

# 68-point (iBUG 300-W) indices of each facial part; a region's weight applies to all of its parts.
REGION_PARTS_68: dict[str, tuple[tuple[int, ...], ...]] = {
    "eyes": (tuple(range(36, 42)), tuple(range(42, 48))),
    "eyebrows": (tuple(range(17, 22)), tuple(range(22, 27))),
    "nose": (tuple(range(27, 36)),),
    "mouth": (tuple(range(48, 68)),),
}
DEFAULT_WEIGHTS: dict[str, float] = {"eyes": 1.0, "mouth": 0.9, "nose": 0.7}
DEFAULT_BLUR_SIGMA = 4.0  # pixels, for a 256-px crop: softens hull edges without bridging the parts
FUSIONS = ("mean", "max")
MAP_BITS = (8, 16)  # landmark maps: 8 bits; CAM maps: 16, because erasing ranks their values (PRLE keeps floats)
MIN_MAX_EPSILON = 1e-7  # pytorch_grad_cam's scale_cam_image: (x − min) / (1e-7 + max)
TARGETS = ("predicted", "label", "fake")  # whose score Grad-CAM explains (PRLE: the predicted class)


class RegionMapError(DfprepError):
    """A map cannot be built as asked: bad weights, too few landmarks, an unusable detector checkpoint."""


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


# ---------------------------------------------------------------- map algebra (PRLE's static localization)


def normalise_min_max(cams: np.ndarray) -> np.ndarray:
    """Per-image ReLU then (x − min) / (1e-7 + max − min) over the last two axes; a flat map becomes all zeros.

    The 1e-7 is pytorch_grad_cam's (PRLE's CAM library): it matters when a weak detector's CAMs are tiny.
    """
    cams = np.maximum(np.asarray(cams, dtype=np.float32), 0.0)
    shifted = cams - cams.min(axis=(-2, -1), keepdims=True)
    return (shifted / (MIN_MAX_EPSILON + shifted.max(axis=(-2, -1), keepdims=True))).astype(np.float32)


def fuse_maps(maps: np.ndarray | Sequence[np.ndarray], fusion: str = "mean") -> np.ndarray:
    """Pixel-wise fusion of one crop's maps from several detectors (axis 0): their mean or their max."""
    stack = np.asarray(maps, dtype=np.float32)
    if fusion == "mean":
        return stack.mean(axis=0)
    if fusion == "max":
        return stack.max(axis=0)
    raise RegionMapError(f"unknown fusion {fusion!r}: use one of {list(FUSIONS)}")


def apply_threshold(region_map: np.ndarray, threshold: float) -> np.ndarray:
    """Zero every value ≤ threshold (PRLE keeps only the confidently salient pixels); the rest is unchanged."""
    return np.where(region_map > threshold, region_map, 0.0).astype(np.float32)


def encode_map_png(region_map: np.ndarray, bits: int = 8) -> bytes:
    """A [0, 1] float map as the grayscale PNG the shards carry: value · 255 (8 bits) or · 65535 (16 bits)."""
    if bits not in MAP_BITS:
        raise RegionMapError(f"map PNGs hold 8 or 16 bits, not {bits}")
    top, dtype = (255, np.uint8) if bits == 8 else (65535, np.uint16)
    levels = np.rint(np.clip(np.asarray(region_map, dtype=np.float32), 0.0, 1.0) * top).astype(dtype)
    ok, buffer = cv2.imencode(".png", levels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RegionMapError("cannot encode a region map as PNG")
    return buffer.tobytes()


def decode_map_png(payload: bytes) -> np.ndarray:
    """The inverse of encode_map_png, 8- or 16-bit alike: (H, W) float32 in [0, 1]; size checked from the header first."""
    try:
        levels = decode_image(payload, cv2.IMREAD_ANYDEPTH)
    except PayloadError as exc:
        raise RegionMapError(f"cannot decode a region map PNG ({exc})") from None
    if levels.ndim != 2 or levels.dtype not in (np.uint8, np.uint16):
        raise RegionMapError("cannot decode a region map PNG (expected 8- or 16-bit grayscale)")
    return levels.astype(np.float32) / (255.0 if levels.dtype == np.uint8 else 65535.0)


# ---------------------------------------------------------------- Grad-CAM over a detector zoo (torch, lazily)

# Modules Grad-CAM reads per reference architecture (dfprep.torch.models), chosen the way PRLE's
# utils/heatmap_vis.py `select_layer` does: the last two convolutional stages (Xception: conv3 and conv4), or
# only the 1×1 head convolution for EfficientNet (`_conv_head`). Each layer's map is normalised on its own,
# the layers are averaged and the mean normalised again (pytorch_grad_cam's multi-layer aggregation).
DEFAULT_CAM_LAYERS: dict[str, tuple[str, ...]] = {
    "tiny_cnn": ("features.2", "features.4"),  # the 2nd and 3rd conv+BN
    "resnet18": ("stages.5", "stages.7"),  # the last block of stages 3 and 4
    "resnet34": ("stages.12", "stages.15"),
    "efficientnet_small": ("features.12",),  # the 1×1 head conv+BN
}
RELEASED_HALVING = 0.5  # PRLE's heatmap_vis.py saves `grayscale_cam / 2`, so its 0.3 threshold acts as 0.6


@dataclass(frozen=True)
class ZooCheckpoint:
    """One zoo member as plain data: file name, checksum and raw bytes (loaded with weights_only=True)."""

    file: str
    sha256: str
    payload: bytes

    @classmethod
    def read(cls, path: str | Path, expected_sha256: str | None = None) -> "ZooCheckpoint":
        """Read a checkpoint file and fingerprint it; a worker checks it sees the file the driver saw."""
        try:
            payload = Path(path).read_bytes()
        except OSError as exc:
            raise RegionMapError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
        digest = hashlib.sha256(payload).hexdigest()
        if expected_sha256 is not None and digest != expected_sha256:
            raise RegionMapError(f"checkpoint {path} changed during the run (sha256 {digest[:12]}…, "
                                 f"expected {expected_sha256[:12]}…)")
        return cls(Path(path).name, digest, payload)


def load_detector(checkpoint: ZooCheckpoint, layers: Sequence[str] = (),
                  trusted: Sequence[str] = ()) -> tuple[Any, dict[str, Any], tuple[str, ...]]:
    """The checkpoint's model (weights checked against its architecture, eval mode), its config, its CAM layers.

    Only data is taken from the file: it may name a registered model, or a factory the user trusted (--model).
    """
    import torch

    from dfprep.torch.models import ModelBuildError, model_from_checkpoint

    try:
        payload = torch.load(io.BytesIO(checkpoint.payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is "not a dfprep checkpoint"
        raise RegionMapError(f"{checkpoint.file}: not a loadable checkpoint ({type(exc).__name__})") from exc
    try:
        model = model_from_checkpoint(payload, checkpoint.file, trusted)
    except ModelBuildError as exc:
        raise RegionMapError(str(exc)) from None
    model.requires_grad_(False)
    config = payload.get("config") or {}
    return model, config, resolve_cam_layers(model, payload["model_name"], layers, checkpoint.file)


def check_state_dict(file: str, model_name: str, expected: Mapping[str, Any], found: Mapping[str, Any]) -> None:
    """Refuse, in one line, weights that do not fit the architecture the checkpoint declares."""
    from dfprep.torch.models import state_dict_mismatch

    problem = state_dict_mismatch(expected, found)
    if problem is not None:
        raise RegionMapError(f"{file}: state_dict does not match its declared architecture {model_name!r}: {problem}")


def resolve_cam_layers(model: Any, model_name: str, layers: Sequence[str], file: str) -> tuple[str, ...]:
    """The modules Grad-CAM reads: as asked, else the architecture's PRLE-style layers, else the last Conv2d."""
    import torch

    modules = dict(model.named_modules())
    if layers:
        unknown = [layer for layer in layers if layer not in modules or layer == ""]
        if unknown:
            sample = ", ".join(name for name in list(modules)[1:6])
            raise RegionMapError(f"{file}: no module named {unknown[0]!r} in {model_name} "
                                 f"(modules include {sample}, …)")
        if len(set(layers)) != len(layers):
            raise RegionMapError(f"{file}: a Grad-CAM layer is named twice in {list(layers)}")
        return tuple(layers)
    defaults = DEFAULT_CAM_LAYERS.get(model_name, ())
    if defaults and all(layer in modules for layer in defaults):
        return defaults
    convolutions = [name for name, module in modules.items() if isinstance(module, torch.nn.Conv2d)]
    if not convolutions:
        raise RegionMapError(f"{file}: {model_name} has no Conv2d layer for Grad-CAM; pass --layer")
    return (convolutions[-1],)


def grad_cam(model: Any, layers: Sequence[str], images: Any, signs: Any = None) -> list[Any]:
    """Raw Grad-CAM (B, h, w) per layer: ReLU(Σ_c mean(∂score/∂A_c) · A_c), score = sign · fake logit.

    `signs` is (B,) of +1 (explain "fake") or -1 (explain "real"); None explains each crop's predicted
    class (+1 where the fake logit is ≥ 0), as PRLE's code does when it passes no target. One forward and
    one backward pass serve every layer. A forward hook captures each layer's activation and hands the
    rest of the network a copy, so in-place ops downstream cannot alter it.
    """
    import torch

    from dfprep.torch.models import fake_logit

    captured: dict[str, Any] = {}
    handles = [dict(model.named_modules())[layer].register_forward_hook(_capture(layer, captured))
               for layer in layers]
    try:
        with torch.enable_grad():
            logits = fake_logit(model(images.detach().requires_grad_(True)))
            if signs is None:
                signs = torch.where(logits.detach() >= 0, 1.0, -1.0)
            activations = [captured[layer] for layer in layers]
            gradients = torch.autograd.grad((logits * signs).sum(), activations, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    cams = []
    for layer, activation, gradient in zip(layers, activations, gradients):
        if gradient is None:
            raise RegionMapError(f"Grad-CAM layer {layer!r} does not feed the model's logit: pick another --layer")
        weights = gradient.mean(dim=(2, 3), keepdim=True)
        cams.append(torch.relu((weights * activation.detach()).sum(dim=1)))
    return cams


def _capture(layer: str, captured: dict[str, Any]) -> Any:
    """A forward hook that keeps a layer's (B, C, h, w) output and passes a copy on."""
    import torch

    def keep_activation(module: Any, inputs: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise RegionMapError(f"Grad-CAM layer {layer!r} must output a (B, C, h, w) tensor")
        captured[layer] = output
        return output.clone()

    return keep_activation


@dataclass(frozen=True)
class CamRecipe:
    """How a zoo's CAMs become one map: PRLE's choices by default (see docs/protocols.md, ## prle)."""

    layers: tuple[str, ...] = ()  # default: DEFAULT_CAM_LAYERS per architecture
    target: str = "predicted"
    fusion: str = "mean"
    threshold: float = 0.3
    released_halving: bool = False  # halve each detector's map before fusion, as PRLE's saved .npy maps are


class CamZoo:
    """Loaded detectors that turn a batch of crops into fused, thresholded primary-region maps."""

    def __init__(self, checkpoints: Sequence[ZooCheckpoint], recipe: CamRecipe = CamRecipe(), device: str = "auto",
                 trusted: Sequence[str] = ()):
        import torch

        if recipe.fusion not in FUSIONS:
            raise RegionMapError(f"unknown fusion {recipe.fusion!r}: use one of {list(FUSIONS)}")
        if recipe.target not in TARGETS:
            raise RegionMapError(f"unknown target {recipe.target!r}: use one of {list(TARGETS)}")
        name = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.device = torch.device(name)
        self.recipe = recipe
        self.detectors = [self._prepare(checkpoint, recipe.layers, trusted) for checkpoint in checkpoints]

    def _prepare(self, checkpoint: ZooCheckpoint, layers: Sequence[str],
                 trusted: Sequence[str]) -> tuple[Any, tuple[str, ...], Any, Any]:
        """Model on the device, its CAM layers, and the mean/std it was trained with."""
        import torch

        model, config, resolved = load_detector(checkpoint, layers, trusted)
        mean = torch.tensor(_three_numbers(config, "mean", checkpoint.file), dtype=torch.float32, device=self.device)
        std = torch.tensor(_three_numbers(config, "std", checkpoint.file), dtype=torch.float32, device=self.device)
        return model.to(self.device), resolved, mean[:, None, None], std[:, None, None]

    def maps(self, crops: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """(B, H, W, 3) RGB uint8 crops (+ (B,) 0/1 labels for target "label") → (B, H, W) float32 maps in [0, 1]."""
        pixels = torch_from(crops).to(self.device).permute(0, 3, 1, 2).float() / 255
        signs = self._signs(len(crops), labels)
        per_model = [self._one_detector(detector, pixels, signs, crops.shape[1:3]) for detector in self.detectors]
        return apply_threshold(fuse_maps(per_model, self.recipe.fusion), self.recipe.threshold)

    def _signs(self, count: int, labels: np.ndarray | None) -> Any:
        """+1/−1 per crop for targets fake and label; None (the predicted class) for predicted."""
        if self.recipe.target == "predicted":
            return None
        if self.recipe.target == "fake":
            return torch_from(np.ones(count, np.float32)).to(self.device)
        if labels is None or len(labels) != count:
            raise RegionMapError("target 'label' needs one 0/1 label per crop")
        return torch_from(np.where(np.asarray(labels) == 1, 1.0, -1.0).astype(np.float32)).to(self.device)

    def _one_detector(self, detector: tuple[Any, tuple[str, ...], Any, Any], pixels: Any, signs: Any,
                      size: tuple[int, int]) -> np.ndarray:
        """One detector's map: per layer min–max and bilinear resize to the crop, layer mean, min–max again."""
        model, layers, mean, std = detector
        cams = grad_cam(model, layers, (pixels - mean) / std, signs)
        per_layer = [resize_maps(normalise_min_max(cam.cpu().numpy()), size) for cam in cams]
        combined = normalise_min_max(np.mean(per_layer, axis=0))
        return combined * RELEASED_HALVING if self.recipe.released_halving else combined


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, h, w) → (B, H, W), bilinear with half-pixel centres (like cv2.INTER_LINEAR), clipped to [0, 1]."""
    import torch.nn.functional as F

    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    resized = F.interpolate(torch_from(maps)[:, None], size=tuple(size), mode="bilinear", align_corners=False)
    return np.clip(resized[:, 0].numpy(), 0.0, 1.0)


def _three_numbers(config: Mapping[str, Any], name: str, file: str) -> tuple[float, ...]:
    """A checkpoint's per-channel mean or std (default 0.5 each); anything but three numbers is a one-line error."""
    values = config.get(name, (0.5, 0.5, 0.5))
    if not isinstance(values, (list, tuple)) or len(values) != 3 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise RegionMapError(f"{file}: config {name} must be three numbers, got {str(values)[:60]}")
    return tuple(float(v) for v in values)


def torch_from(array: np.ndarray) -> Any:
    """A CPU tensor sharing the array's memory."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(array))
