"""`dfprep demo`: a small labelled video set built from a bundled real face, run through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from dfprep.synthetic import FacePlacement, head_patch, linear_motion, render_frame, write_clip

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
    donor = donor * rng.uniform(0.85, 1.15, size=3).astype(np.float32)  # a different skin tone
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
