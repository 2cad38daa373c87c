"""PRLE's map chain re-implemented from the formulas of its public code, and dfprep's CAM maps measured against it.

    .venv/bin/python benchmarks/protocol_prle.py [--frames 4] [--size 128] [--epochs 2]
                                                 [--zoo tiny_cnn efficientnet_small resnet18]

What PRLE's released code does (github.com/xaCheng1996/PRLE; re-implemented here in our own words, nothing copied):

* utils/heatmap_vis.py `select_layer` / `visual`: pytorch_grad_cam's GradCAM over a few layers per model
  (Xception conv3+conv4, EfficientNet _conv_head, VGG features[-3:]), called without targets, so each image
  explains its *predicted* class. Per layer: ReLU(Σ_c mean_hw(∂score/∂A_c)·A_c), minus its min, divided by
  (1e-7 + its max), cv2.resize (bilinear) to the input size; the layers are averaged and min–max scaled
  again. The map is then halved (`grayscale_cam / 2`) and saved as a float32 .npy.
* heatmap_fusion.py `main` / `single_pix_per_heatmaps`: each model's .npy → PIL image (mode F) → resized
  to 256×256 (PIL's default filter) → np.average over the models → values ≤ 0.3 zeroed → float32 .npy.
* dataset/ImageFolder.py + heatmap_finetune.py `des_mask`: the pixels > 0 sorted by (value, (row, col))
  descending, the top ⌊α·n⌋ erased (and written back with row and column swapped: the transposed mask).

The script builds the demo videos, extracts them with the `prle` recipe, trains a small zoo with
`dfprep train`, makes dfprep's maps (`dfprep maps --method cam`, plain and --released-halving) and the
reference maps from the same checkpoints on the same decoded crops, and prints the agreement. It asserts
nothing; tests/test_prle_chain.py checks the same numbers on a smaller run.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np

PRLE_THRESHOLD = 0.3
PRLE_EPSILON = 1e-7  # pytorch_grad_cam's scale_cam_image divides by (1e-7 + max)


# ---------------------------------------------------------------- the reference chain (numpy, cv2, PIL)


def split_at(model: Any, model_name: str, layer: str) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """The network cut at `layer` ("<sequential>.<index>"): input → activation, activation → fake logit.

    Written per reference architecture instead of with hooks, so it shares no code path with dfprep's
    Grad-CAM. Works for tiny_cnn and efficientnet_small (features → head) and the resnets (stem → stages → head).
    """
    container, index = layer.rsplit(".", 1)
    blocks, cut = getattr(model, container), int(index) + 1
    stem = [model.stem] if model_name.startswith("resnet") else []

    def prefix(images: Any) -> Any:
        for module in stem:
            images = module(images)
        return blocks[:cut](images)

    def suffix(activation: Any) -> Any:
        return model.head(blocks[cut:](activation.clone()))  # a clone: in-place ReLUs must not touch the leaf

    return prefix, suffix


def scale_like_grad_cam(cam: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """(x − min) / (1e-7 + max(x − min)), then cv2 bilinear resize to (H, W) when asked."""
    shifted = cam - cam.min()
    scaled = (shifted / (PRLE_EPSILON + shifted.max())).astype(np.float32)
    return scaled if size is None else cv2.resize(scaled, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def reference_model_map(model: Any, model_name: str, layers: Iterable[str], image: Any, target: str,
                        label: int) -> np.ndarray:
    """One model's map of one normalised (1, 3, H, W) image, as heatmap_vis.py computes it (not yet halved)."""
    import torch

    size = tuple(image.shape[-2:])
    per_layer = []
    for layer in layers:
        prefix, suffix = split_at(model, model_name, layer)
        with torch.no_grad():
            activation = prefix(image)
        activation.requires_grad_(True)
        logit = suffix(activation).reshape(())
        predicted = 1.0 if float(logit.detach()) >= 0 else -1.0
        sign = {"predicted": predicted, "fake": 1.0, "label": 1.0 if label else -1.0}[target]
        (gradient,) = torch.autograd.grad(sign * logit, activation)
        weights = gradient.mean(dim=(2, 3)).numpy()[0]
        cam = np.maximum(np.tensordot(weights, activation.detach().numpy()[0], axes=1), 0.0)
        per_layer.append(scale_like_grad_cam(cam, size))
    return scale_like_grad_cam(np.maximum(np.mean(per_layer, axis=0), 0.0))


def reference_fusion(model_maps: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """heatmap_fusion.py: each map through PIL (mode F) resized to the crop, averaged, ≤ 0.3 zeroed."""
    from PIL import Image

    resized = [np.asarray(Image.fromarray(m.astype(np.float32)).resize((size[1], size[0])), np.float32)
               for m in model_maps]
    fused = np.average(np.stack(resized), axis=0)
    kept = np.zeros_like(fused)
    kept[fused > PRLE_THRESHOLD] = fused[fused > PRLE_THRESHOLD]
    return kept


def reference_maps(zoo: list[tuple[Any, str, tuple[str, ...], tuple[float, ...], tuple[float, ...]]],
                   crops: np.ndarray, labels: np.ndarray, target: str = "predicted",
                   halve: bool = False) -> np.ndarray:
    """(B, H, W, 3) uint8 RGB crops → (B, H, W) PRLE maps from a zoo of (model, name, layers, mean, std)."""
    import torch

    maps = []
    for crop, label in zip(crops, labels):
        model_maps = []
        for model, name, layers, mean, std in zoo:
            pixels = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
            image = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
            model_map = reference_model_map(model, name, layers, image, target, int(label))
            model_maps.append(model_map / 2 if halve else model_map)
        maps.append(reference_fusion(model_maps, crop.shape[:2]))
    return np.stack(maps)


def prle_erased(region_map: np.ndarray, alpha: float) -> np.ndarray:
    """des_mask: the pixels > 0 ranked by (value, (row, col)) descending, the first ⌊α·n⌋ (not transposed)."""
    rows, cols = np.nonzero(region_map > 0)
    values = region_map[rows, cols]
    order = np.lexsort((cols, rows, values))[::-1]  # value first, then row, then column; descending
    keep = order[:int(alpha * len(order))]
    mask = np.zeros(region_map.shape, bool)
    mask[rows[keep], cols[keep]] = True
    return mask


# ---------------------------------------------------------------- reading an output and comparing


def load_zoo(paths: Iterable[str]) -> list[tuple[Any, str, tuple[str, ...], tuple[float, ...], tuple[float, ...]]]:
    """Each checkpoint's model (eval), name, dfprep's default CAM layers, and its normalisation."""
    import torch

    from dfprep.torch.cam import DEFAULT_CAM_LAYERS
    from dfprep.torch.models import build_model

    zoo = []
    for path in paths:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(payload["model_name"])
        model.load_state_dict(payload["state_dict"])
        config = payload.get("config") or {}
        zoo.append((model.eval(), payload["model_name"], DEFAULT_CAM_LAYERS[payload["model_name"]],
                    tuple(config.get("mean", (0.5,) * 3)), tuple(config.get("std", (0.5,) * 3))))
    return zoo


def read_members(tar_path: Path, suffix: str) -> dict[str, bytes]:
    """key → payload of every member ending in `suffix`."""
    with tarfile.open(tar_path) as tar:
        return {m.name[:-len(suffix)]: tar.extractfile(m).read() for m in tar if m.name.endswith(suffix)}


def crops_and_maps(out: Path, name: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Keys, decoded RGB crops, labels and dfprep's decoded maps (float in [0, 1]) of every face in OUT."""
    import json

    keys, crops, labels, maps = [], [], [], []
    image = "." + json.loads((out / "dataset.json").read_text())["config"]["output"]["image_format"]
    for tar_path in sorted(out.glob("*.tar")):
        images, metas = read_members(tar_path, image), read_members(tar_path, ".json")
        stored = read_members(out / "maps" / name / tar_path.name, ".prmap.png")
        for key in images:
            keys.append(key)
            bgr = cv2.imdecode(np.frombuffer(images[key], np.uint8), cv2.IMREAD_COLOR)
            crops.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            labels.append(int(json.loads(metas[key])["label"]))
            levels = cv2.imdecode(np.frombuffer(stored[key], np.uint8), cv2.IMREAD_UNCHANGED)
            maps.append(levels / float(np.iinfo(levels.dtype).max))  # 8-bit: / 255; 16-bit (CAM): / 65535
    return keys, np.stack(crops), np.array(labels), np.stack(maps).astype(np.float32)


def agreement(ours: np.ndarray, reference: np.ndarray, alphas: Iterable[float] = (0.5, 0.75, 1.0)) -> dict[str, float]:
    """How close dfprep's stored maps are to the reference: values, support, and the pixels PRLE would erase."""
    from dfprep.torch.transforms import primary_region_mask

    import torch

    difference = np.abs(ours - reference)
    support_ours, support_ref = ours > 0, reference > 0
    result = {"max_abs": float(difference.max()), "max_abs_both_kept": float(difference[support_ours & support_ref].max(
                  initial=0.0)), "within_1e-3": float(np.mean(difference <= 1e-3)),
              "support_iou": iou(support_ours, support_ref),
              "threshold_flips": int(np.sum(support_ours != support_ref)),
              "pixels": int(ours.size), "ref_coverage": float(support_ref.mean())}
    for alpha in alphas:
        ious = [iou(primary_region_mask(torch.from_numpy(o), alpha, 0.0).numpy(), prle_erased(r, alpha))
                for o, r in zip(ours, reference)]
        result[f"erased_iou_{alpha}"] = float(np.mean(ious))
    return result


def iou(first: np.ndarray, second: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.count_nonzero(first | second)
    return 1.0 if union == 0 else np.count_nonzero(first & second) / union


# ---------------------------------------------------------------- the measured run


def cli(*arguments: str) -> str:
    """Run one `dfprep` command in-process; its output, or an exception with it."""
    from click.testing import CliRunner

    from dfprep.cli import cli as dfprep

    result = CliRunner().invoke(dfprep, list(arguments))
    if result.exit_code != 0:
        raise RuntimeError(f"dfprep {' '.join(arguments)} failed:\n{result.output}")
    return result.output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="crop size (the deepfakebench crop, resized)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--zoo", nargs="+", default=["tiny_cnn", "efficientnet_small", "resnet18"])
    args = parser.parse_args()
    import torch

    from dfprep.cli.demo import build_demo_dataset

    with tempfile.TemporaryDirectory(prefix="dfprep-prle-") as workdir:
        root = Path(workdir)
        build_demo_dataset(root / "videos")
        out = root / "out"
        cli("extract", "folder", str(root / "videos"), "-o", str(out), "--pipeline", "prle", "--frames",
            str(args.frames), "--set", f"alignment.size={args.size}", "--workers", "0", "--quiet")
        zoo = []
        for seed, name in enumerate(args.zoo):
            cli("train", str(out), "-o", str(root / f"zoo-{name}"), "--model", name, "--epochs", str(args.epochs),
                "--seed", str(seed), "--workers", "0", "--device", "cpu", "--quiet", "--batch-size", "16")
            zoo.append(str(root / f"zoo-{name}" / "model.pt"))
        print(f"== PRLE maps: dfprep vs the re-implemented PRLE chain, demo data, {args.size} px crops, "
              f"zoo {'+'.join(args.zoo)} ({args.epochs} epochs each) ==")
        for label, flags, halve in (("plain", [], False), ("released halving", ["--released-halving"], True)):
            name = "cam-halved" if halve else "cam"
            started = time.perf_counter()
            cli("maps", str(out), "--method", "cam", "--zoo", *zoo, "--name", name, "--workers", "0", "--quiet",
                "--device", "cpu", *flags)
            seconds = time.perf_counter() - started
            keys, crops, labels, ours = crops_and_maps(out, name)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # the reference runs one crop at a time: threads would only contend
            reference = reference_maps(load_zoo(zoo), crops, labels, halve=halve)
            torch.set_num_threads(threads)
            numbers = agreement(ours, reference)
            print(f"  {label:17s} {len(keys)} maps ({seconds:.1f} s): " + ", ".join(
                f"{k} {v}" if isinstance(v, int) else f"{k} {v:.6g}" for k, v in numbers.items()))


if __name__ == "__main__":
    sys.exit(main())
