"""`dfprep demo`: a small labelled video set built from a bundled real face, run through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from dfprep.cli.democlips import FacePlacement, head_patch, linear_motion, render_frame, write_clip

SPLITS = {"train": 4, "val": 2, "test": 2}  # videos per class and split


@dataclass(frozen=True)
class DemoClip:
    """One demo video: where it goes, its label and how the face moves."""

    path: Path
    fake: bool
    seed: int


def swapped_patch(seed: int) -> np.ndarray:
    """A crude 'face swap': the inner face replaced by a shifted, recoloured copy, blended with a soft mask."""
    patch = head_patch().astype(np.float32)
    rng = np.random.default_rng(seed)
    height, width = patch.shape[:2]
    shift = np.float32([[1, 0, rng.uniform(-4, 4)], [0, 1, rng.uniform(-4, 4)]])
    donor = cv2.warpAffine(patch, shift, (width, height), borderMode=cv2.BORDER_REFLECT)
    tone = 1 + rng.choice([-1.0, 1.0], size=3) * rng.uniform(0.12, 0.2, size=3)  # a clearly different skin tone
    donor = donor * tone.astype(np.float32)
    mask = np.zeros((height, width), np.float32)
    cv2.ellipse(mask, (width // 2 + 6, height // 2 + 6), (40, 52), 0, 0, 360, 1.0, -1)  # eyes to mouth
    mask = cv2.GaussianBlur(mask, (0, 0), 6)[..., None]
    return np.clip(donor * mask + patch * (1 - mask), 0, 255).astype(np.uint8)


def demo_clips(root: Path) -> list[DemoClip]:
    """The clip list: per split, real and fake videos with different seeds."""
    clips = []
    for split, count in SPLITS.items():
        for index in range(count):
            for fake in (False, True):
                label = "fake" if fake else "real"
                clips.append(DemoClip(root / split / label / f"{split}_{label}_{index}.mp4", fake, len(clips)))
    return clips


def _faces(clip: DemoClip) -> Callable[[int, int], list[FacePlacement]]:
    """Each clip's own path across the frame."""
    rng = np.random.default_rng(clip.seed)
    start = FacePlacement(rng.uniform(0, 60), rng.uniform(0, 30), rng.uniform(0.8, 0.95))
    end = FacePlacement(rng.uniform(80, 150), rng.uniform(10, 60), rng.uniform(0.8, 0.95))
    return linear_motion(start, end)


def _swap_filter(clip: DemoClip, places: Callable[[int, int], list[FacePlacement]],
                 frames: int) -> Callable[[int, np.ndarray], np.ndarray]:
    """Re-render each frame of a fake with the swapped face patch."""
    patch = swapped_patch(clip.seed)
    return lambda index, frame: render_frame(400, 300, places(index, frames), clip.seed, patch)


def build_demo_dataset(root: Path, frames: int = 20) -> list[DemoClip]:
    """Write the demo videos (a `folder` dataset with train/val/test) unless they already exist."""
    clips = demo_clips(root)
    for clip in clips:
        if not clip.path.exists():
            places = _faces(clip)
            swap = _swap_filter(clip, places, frames) if clip.fake else None
            write_clip(clip.path, 400, 300, frames, places, gop=10, seed=clip.seed, frame_filter=swap)
    return clips


def _torch_available() -> bool:
    """Whether the torch extra is installed (train/evaluate need it)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def run_demo(root: Path, workers: int | None, quiet: bool, echo: Callable[[str], None]) -> None:
    """The newcomer's tour: videos → extract (+ maps) → stats → preview → train → evaluate."""
    from dfprep.catalog import scan
    from dfprep.cli.summary import format_summary
    from dfprep.config import load_config
    from dfprep.inspect.preview import write_sheet
    from dfprep.runner.run import extract_run
    from dfprep.inspect.stats import compute_stats, format_stats

    videos, shards, sheet, run = root / "videos", root / "shards", root / "sheet.png", root / "runs" / "tiny"
    echo(f"1/6 demo videos from scikit-image's astronaut photo → {videos}")
    clips = build_demo_dataset(videos)
    echo(f"    {len(clips)} clips: real ones and crudely face-swapped fakes, in train/val/test folders")
    config = load_config("prle-landmarks", {"dataset.name": "folder", "dataset.root": str(videos),
                                            "sampling.frames": 8, "output.videos_per_shard": 4, "ray.workers": workers})
    echo("2/6 dfprep extract folder videos/ -o shards/ --pipeline prle-landmarks  (8 frames/video, 256 px, maps)")
    echo(format_summary(extract_run(scan("folder", videos, config.dataset), config, str(shards), quiet=quiet)))
    echo("3/6 dfprep stats shards/")
    echo(_indent(format_stats(compute_stats(str(shards))).split("\n\n")[0]))
    height, width = write_sheet(str(shards), str(sheet), n=24, split=None, maps="landmarks", seed=0, video=None,
                                cols=8, tile=128)
    echo(f"4/6 dfprep preview shards/ -o sheet.png --maps landmarks  → {sheet} ({width}x{height})")
    if not _torch_available():
        echo("5/6 and 6/6 skipped: train/evaluate need torch (pip install 'torch==2.13.0' -e '.[torch]')")
    else:
        _train_and_evaluate(shards, run, echo, quiet)
    echo(_tour(root, videos, shards, sheet, run))


def _train_and_evaluate(shards: Path, run: Path, echo: Callable[[str], None], quiet: bool) -> None:
    """A tiny detector for a few epochs on CPU, then the evaluation table."""
    from dfprep.torch.evaluate import evaluate, format_table
    from dfprep.torch.train import TrainConfig, train

    echo("5/6 dfprep train shards/ -o runs/tiny --model tiny_cnn --epochs 8 --region-erasing --maps landmarks")
    rows = train(TrainConfig((str(shards),), model="tiny_cnn", epochs=8, batch_size=16, lr=3e-3, workers=0,
                             region_erasing=True, maps="landmarks", device="cpu"), str(run), progress=not quiet)
    for row in rows:
        echo(f"    epoch {row.get('epoch')}: train loss {row.get('train_loss', float('nan')):.3f}")
    echo("6/6 dfprep evaluate runs/tiny/model.pt shards/")
    echo(_indent(format_table(evaluate(str(run / "model.pt"), [str(shards)], device="cpu",
                                       json_path=str(run / "evaluation.json")))))


def _indent(text: str) -> str:
    """Indent a block under its step."""
    return "\n".join("    " + line for line in text.splitlines())


def _tour(root: Path, videos: Path, shards: Path, sheet: Path, run: Path) -> str:
    """Where every artefact is, and what to run next."""
    return f"""
Where things are ({root}):
  videos/                  the input: a `folder` dataset (<split>/<real|fake>/*.mp4)
  shards/*.tar             WebDataset shards: <key>.jpg aligned face, <key>.ldm.npy landmarks, <key>.json
  shards/videos.parquet    one row per input video with its status; shards/dataset.json: config + versions
  shards/maps/landmarks/   companion map shards, same keys in the same order (<key>.prmap.png)
  sheet.png                contact sheet: crops, landmarks, label borders, region maps
  runs/tiny/               checkpoints (torch.load(..., weights_only=True)), metrics.csv, evaluation.json
Next: dfprep datasets   (the dataset layouts dfprep reads), then
      dfprep extract ffpp /path/to/FaceForensics++ -o out/ffpp"""
