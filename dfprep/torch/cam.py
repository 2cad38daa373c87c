"""Grad-CAM over a zoo of trained detectors: PRLE's static localization, as a mapper for `dfprep maps --method cam`.

A map is an (H, W) float32 array in [0, 1] indexed like its crop. torch is imported lazily, so the numpy
parts (normalise_min_max, fuse_maps) work without it; the map job gets this module's `GradCamBackend`
from the runner, so no lower layer imports torch.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from dfprep.config.schema import FUSIONS, TARGETS, CamRecipe
from dfprep.errors import RegionMapError
from dfprep.io.regionmaps import ZooCheckpoint, apply_threshold

MIN_MAX_EPSILON = 1e-7  # pytorch_grad_cam's scale_cam_image: (x − min) / (1e-7 + max)


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


@contextmanager
def exact_float32() -> Iterator[None]:
    """CUDA's TF32 off while CAMs are computed: with it on, an H200 gave maps up to 7e-3 away from the CPU's, which
    the threshold turned into 0.30 jumps; without it the gap is 4e-6. Maps are made once, so exactness wins."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


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
        with exact_float32():
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


class GradCamBackend:
    """The map job's CAM backend (dfprep.jobs.maps.CamBackend): stateless, so Ray ships it to actors by name."""

    def layers(self, checkpoint: ZooCheckpoint, layers: Sequence[str], trusted: Sequence[str]) -> tuple[str, ...]:
        """Load one checkpoint (a bad file fails here, on the driver) and name the modules Grad-CAM reads."""
        return load_detector(checkpoint, layers, trusted)[2]

    def zoo(self, checkpoints: Sequence[ZooCheckpoint], recipe: CamRecipe, device: str,
            trusted: Sequence[str]) -> CamZoo:
        """Every checkpoint loaded onto the device as one zoo."""
        return CamZoo(checkpoints, recipe, device, trusted)
