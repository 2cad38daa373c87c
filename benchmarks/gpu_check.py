"""GPU check of dfprep's torch side (never run on CUDA before): AMP training, resume, evaluate, Grad-CAM maps.

Run on a CUDA machine from the repo root: python3 benchmarks/gpu_check.py (prints JSON; writes $OUT/gpu.json).
GPU_CHECK_DRY=1 rehearses it on CPU with a tiny model.
"""
import json, os, sys, time
from pathlib import Path

sys.path.insert(0, os.getcwd())
import numpy as np
import torch

from tests.helpers.torch_synthetic import SyntheticSpec, write_synthetic_out
from dfprep.torch.trainconfig import TrainConfig
from dfprep.torch.train import train
from dfprep.torch.evaluate import evaluate
from dfprep.torch.cam import CamZoo
from dfprep.io.regionmaps import ZooCheckpoint
from dfprep.config.schema import CamRecipe

DRY = os.environ.get("GPU_CHECK_DRY") == "1"  # a local rehearsal on CPU with a tiny model
GPU = "cpu" if DRY else "cuda"
MODEL = "tiny_cnn" if DRY else "resnet18"
result = {"torch": torch.__version__, "gpu": None if DRY else torch.cuda.get_device_name(0),
          "cuda": torch.cuda.is_available()}
root = Path("/tmp/gpucheck")
out = root / "out"
write_synthetic_out(str(out), SyntheticSpec(videos={"train": (24, 24), "test": (6, 6)}, frames=8, size=64,
                                             maps="landmarks"))
for device in (GPU, "cpu"):
    cfg = TrainConfig(out_dirs=(str(out),), model=MODEL, epochs=2, batch_size=32, device=device, workers=2,
                      maps="landmarks", region_erasing=True, seed=0)
    started = time.time()
    rows = train(cfg, root / f"run-{device}-{len(result)}", progress=False)
    result[f"train_{device}_s"] = round(time.time() - started, 2)
    result[f"train_{device}_last"] = {k: rows[-1].get(k) for k in ("epoch", "steps", "train_loss", "val_frame_auc")}
# resume on cuda: a third epoch continues from the second's checkpoint
rows = train(TrainConfig(out_dirs=(str(out),), model=MODEL, epochs=3, batch_size=32, device=GPU, workers=2,
                         maps="landmarks", region_erasing=True, seed=0), root / f"run-{GPU}-3", progress=False)
result["resume_epochs"] = [r["epoch"] for r in rows]
result["evaluate_gpu"] = evaluate(str(root / f"run-{GPU}-3/model.pt"), [str(out)], device=GPU)[0]
result["evaluate_cpu"] = evaluate(str(root / f"run-{GPU}-3/model.pt"), [str(out)], device="cpu")[0]
# Grad-CAM: the same zoo on cuda and on cpu, the same crops → the same maps
checkpoint = ZooCheckpoint.read(root / f"run-{GPU}-3/model.pt")
rng = np.random.default_rng(0)
crops = rng.integers(0, 255, (16, 64, 64, 3), dtype=np.uint8)
maps = {}
for device in (GPU, "cpu"):
    zoo = CamZoo([checkpoint], CamRecipe(), device, ())
    started = time.time()
    maps[device] = zoo.maps(crops)
    result[f"cam_{device}_s"] = round(time.time() - started, 3)
result["cam_shape"] = list(maps[GPU].shape)
result["cam_max_abs_gap_cuda_vs_cpu"] = float(np.abs(maps[GPU] - maps["cpu"]).max())
print(json.dumps(result, default=str, indent=1))
Path(os.environ.get("OUT", "/tmp")).joinpath("gpu.json").write_text(json.dumps(result, default=str, indent=1))
