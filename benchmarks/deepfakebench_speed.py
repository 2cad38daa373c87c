"""Time DeepfakeBench's own preprocessing/preprocess.py on an FF++-layout input, as its README runs it.

    .venv/bin/python benchmarks/deepfakebench_speed.py --dfb DIR --ffpp DIR/FaceForensics++ --python PY [--runs 3]

Used by benchmarks/cli_speed.py default28. Contains no DeepfakeBench code: it lays out what the script reads
from its working directory (config.yaml with dataset_root_path/dataset_name/num_frames set, dlib_tools/<81-point
.dat>, logs/) and runs `python <dfb>/preprocessing/preprocess.py` there. Each run mirrors the FF++ tree with
symlinks into a fresh folder, because preprocess.py writes frames/ and landmarks/ beside the videos and skips
PNGs that exist. Without --predictor the 68-point model from face_recognition_models stands in for the 81-point
one (preprocess.py aligns on shape points 30-55, which both models have at the same indices).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPECTED_DAT = "shape_predictor_81_face_landmarks.dat"


def default_predictor(python: str) -> Path:
    """The 68-point dlib model: face_recognition_models' copy as DeepfakeBench's interpreter finds it, else the
    one dfprep resolves as `dlib68` (the same file)."""
    code = "import face_recognition_models as m; print(m.pose_predictor_model_location())"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if done.returncode == 0:
        return Path(done.stdout.strip())
    from dfprep.vision.models import resolve_model

    return resolve_model("dlib68").path


def mirror(ffpp: Path, target: Path) -> int:
    """Symlink every video of the FF++ tree into `target` (same relative paths); returns how many."""
    count = 0
    for video in ffpp.rglob("*.mp4"):
        link = target / video.relative_to(ffpp)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(video.resolve(), link)
        count += 1
    return count


def lay_out(dfb: Path, workdir: Path, dataset_root: Path, frames: int, predictor: Path) -> None:
    """config.yaml with the dataset, root, compression and frame count set; dlib_tools/ and logs/."""
    import yaml

    config = yaml.safe_load((dfb / "preprocessing" / "config.yaml").read_text())
    section = config["preprocess"]
    section["dataset_name"]["default"] = "FaceForensics++"
    section["dataset_root_path"]["default"] = str(dataset_root)
    section["comp"]["default"] = "c23"
    section["mode"]["default"] = "fixed_num_frames"
    section["num_frames"]["default"] = frames
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    (workdir / "dlib_tools").mkdir()
    os.symlink(predictor.resolve(), workdir / "dlib_tools" / EXPECTED_DAT)
    (workdir / "logs").mkdir()


def run_preprocess(dfb: Path, ffpp: Path, python: str, frames: int, tmp: Path,
                   predictor: Path | None = None) -> dict[str, float]:
    """One run of preprocess.py on a fresh mirror of `ffpp`: wall, CPU, crops written."""
    predictor = predictor or default_predictor(python)
    with tempfile.TemporaryDirectory(prefix="dfb-run-", dir=tmp) as folder:
        dataset_root, workdir = Path(folder) / "data", Path(folder) / "work"
        videos = mirror(ffpp, dataset_root / "FaceForensics++")
        workdir.mkdir()
        lay_out(dfb, workdir, dataset_root, frames, predictor)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load = os.getloadavg()[0]
        started = time.perf_counter()
        done = subprocess.run([python, str(dfb / "preprocessing" / "preprocess.py")], cwd=workdir,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0 or "Face cropping complete" not in done.stdout:
            raise SystemExit(f"preprocess.py failed (rc {done.returncode}):\n{done.stdout[-3000:]}")
        pngs = sum(1 for _ in dataset_root.rglob("frames/*/*.png"))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"  DeepfakeBench run: wall {wall:6.1f} s  cpu {cpu:6.1f} s  {pngs} crops / {videos} videos  "
          f"load {load:.1f}->{os.getloadavg()[0]:.1f}", flush=True)
    return {"wall_s": wall, "cpu_s": cpu, "videos": videos, "pngs": pngs}


def main() -> int:
    """Run preprocess.py `runs` times and print the worst."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dfb", type=Path, required=True, help="DeepfakeBench checkout (has preprocessing/)")
    parser.add_argument("--ffpp", type=Path, required=True, help="FaceForensics++ folder in FF++ layout")
    parser.add_argument("--python", default=sys.executable, help="interpreter with dlib, cv2, skimage, imutils")
    parser.add_argument("--predictor", type=Path, help=f"{EXPECTED_DAT} (default: the 68-point stand-in)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dfb-bench-") as tmp:
        runs = [run_preprocess(args.dfb, args.ffpp, args.python, args.frames, Path(tmp), args.predictor)
                for _ in range(args.runs)]
    print(f"DeepfakeBench preprocess.py: worst of {len(runs)} {max(r['wall_s'] for r in runs):.1f} s, "
          f"best {min(r['wall_s'] for r in runs):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
