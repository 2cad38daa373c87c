"""Primary-region map throughput on real FF++ faces, and what a landmark map costs next to extracting its face.

    .venv/bin/python benchmarks/maps.py [--root ../shared/data/ffpp-mini] [--frames 32]
                                        [--zoo tiny_cnn resnet18 efficientnet_small] [--device cpu]

Extracts the videos in-process into a temporary folder (the extract time per face is the reference), then
runs `dfprep maps` in-process with both methods and prints maps/s and ratios; asserts nothing. The CAM zoo
uses randomly initialised reference detectors: Grad-CAM's cost does not depend on what the weights learnt.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_floor import DEFAULT_ROOT  # noqa: E402

from dfprep.catalog import scan  # noqa: E402
from dfprep.config import load_config  # noqa: E402
from dfprep.config.schema import RayConfig
from dfprep.jobs.maps import MapRun, MapSettings
from dfprep.runner.run import maps_run  # noqa: E402
from dfprep.io.regionmaps import encode_map_png
from dfprep.vision.regions import landmark_prior_map  # noqa: E402
from dfprep.runner.run import extract_run  # noqa: E402


def extract_faces(root: Path, out: Path, frames: int) -> tuple[float, int]:
    """In-process extraction of every video (the deepfakebench crop); returns (wall seconds, faces)."""
    config = load_config(None, {"sampling.frames": frames, "ray.workers": 0, "output.videos_per_shard": 2})
    started = time.perf_counter()
    report = extract_run(scan("ffpp", root, config.dataset), config, str(out), quiet=True)
    return time.perf_counter() - started, report.faces


def stored_landmarks(out: Path) -> list[np.ndarray]:
    """Every face's landmarks as stored in the shards (what an inline map would be built from)."""
    landmarks = []
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            landmarks += [np.load(io.BytesIO(tar.extractfile(m).read())) for m in tar if m.name.endswith(".ldm.npy")]
    return landmarks


def inline_cost(landmarks: list[np.ndarray], size: tuple[int, int]) -> float:
    """Seconds per face for map + PNG alone: the cost extract would pay for inline maps."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for points in landmarks:
            encode_map_png(landmark_prior_map(points, size))
        best = min(best, (time.perf_counter() - started) / len(landmarks))
    return best


def write_zoo(names: list[str], folder: Path) -> list[str]:
    """Randomly initialised reference detectors saved as dfprep checkpoints."""
    import torch

    from dfprep.torch.models import build_model

    paths = []
    for index, name in enumerate(names):
        torch.manual_seed(index)
        path = folder / f"{name}.pt"
        torch.save({"model_name": name, "state_dict": build_model(name).state_dict(), "config": {}}, path)
        paths.append(str(path))
    return paths


def timed_maps(out: Path, settings: MapSettings) -> tuple[float, int]:
    """Wall seconds and maps written for one in-process `dfprep maps` run."""
    started = time.perf_counter()
    report = maps_run(str(out), MapRun(settings, RayConfig(workers=0), quiet=True))
    return time.perf_counter() - started, report.maps_written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--zoo", nargs="+", default=["tiny_cnn", "resnet18", "efficientnet_small"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dfprep-maps-bench-") as workdir:
        out = Path(workdir) / "ffpp"
        extract_s, faces = extract_faces(args.root, out, args.frames)
        per_face = extract_s / faces
        print(f"== dfprep maps on {args.root.name}: {faces} faces, 256 px deepfakebench crops, in-process CPU ==")
        print(f"  extract            {extract_s:7.2f} s   {faces / extract_s:8.1f} faces/s   "
              f"{per_face * 1e3:7.2f} ms/face")
        inline = inline_cost(stored_landmarks(out), (256, 256))
        landmark_s, written = timed_maps(out, MapSettings(batch_size=args.batch_size))
        per_map = landmark_s / written
        print(f"  maps landmarks     {landmark_s:7.2f} s   {written / landmark_s:8.1f} maps/s    "
              f"{per_map * 1e3:7.2f} ms/map   = {per_map / per_face:.1%} of extract per face "
              f"({'under' if per_map < 0.1 * per_face else 'OVER'} the 10% budget)")
        print(f"    inline (map + png only, what extract would add)  {inline * 1e3:7.3f} ms/face = "
              f"{inline / per_face:.2%} of extract")
        zoo = write_zoo(args.zoo, Path(workdir))
        for members in [[path] for path in zoo] + ([zoo] if len(zoo) > 1 else []):
            settings = MapSettings(method="cam", zoo=tuple(members), batch_size=args.batch_size, device=args.device,
                                   name="cam-" + "-".join(Path(p).stem for p in members))
            cam_s, written = timed_maps(out, settings)
            print(f"  maps cam {settings.name[4:]:<38s} {cam_s:7.2f} s   {written / cam_s:8.1f} maps/s   "
                  f"{cam_s / written / per_face:6.2f}x extract per face")


if __name__ == "__main__":
    main()
