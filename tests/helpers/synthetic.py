"""Synthetic face clips for tests: the demo's generator (dfprep.cli.democlips) plus the tests' own oracles.

Clips show the astronaut's head from scikit-image's bundled photo moving over a textured background; the
oracle says where dlib's face box must land. Nothing here ships in the package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from dfprep.cli.demo import swapped_patch  # the demo's crude face swap: a recoloured, shifted inner face
from dfprep.cli.democlips import (HEAD_BOX, STORED_TURNS_PER_ROTATION, FacePlacement, background, head_patch,
                                  linear_motion, render_frame, write_clip)

__all__ = ["FACE_BOX_IN_PHOTO", "HEAD_BOX", "STORED_TURNS_PER_ROTATION", "FacePlacement", "background",
           "face_box_in_frame", "head_patch", "lfw_face", "linear_motion", "moving_face", "render_frame",
           "write_clip", "write_ffpp_pairs"]

FACE_BOX_IN_PHOTO = (181, 76, 270, 166)  # dlib's face box inside the astronaut photo, measured on a pasted patch


def face_box_in_frame(place: FacePlacement) -> tuple[float, float, float, float]:
    """Where dlib's face box lands in a frame for a given placement (the test oracle)."""
    fx0, fy0, fx1, fy1 = FACE_BOX_IN_PHOTO
    hx, hy = HEAD_BOX[0], HEAD_BOX[1]
    s = place.scale
    return (place.x + (fx0 - hx) * s, place.y + (fy0 - hy) * s, place.x + (fx1 - hx) * s, place.y + (fy1 - hy) * s)


def moving_face(width: int = 480, height: int = 360) -> Callable[[int, int], list[FacePlacement]]:
    """A face drifting right and down across the frame."""
    return linear_motion(FacePlacement(20, 20, 0.9), FacePlacement(width - 230, height - 230, 1.0))


def lfw_face(index: int, size: int = 170) -> np.ndarray:
    """Another person's face: a Labeled Faces in the Wild image bundled with scikit-image (0–99 are faces)."""
    from skimage import data

    gray = cv2.resize(data.lfw_subset()[index], (size, size), interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(np.clip(gray * 255, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)


def write_ffpp_pairs(root: Path, frames: int = 16, width: int = 400, height: int = 300) -> Path:
    """A tiny FF++ tree of fake/original pairs: one footage, the face swapped in the fakes (tests, benchmarks).

    `000` is an original; `Deepfakes/000_001` is the same footage with a swapped face (same frame count);
    `FaceSwap/000_002` the same but 4 frames shorter; `Face2Face/003_004` a fake whose original is absent.
    """
    places = linear_motion(FacePlacement(30, 20, 0.9), FacePlacement(150, 60, 0.95))
    videos = root / "original_sequences" / "youtube" / "c23" / "videos"
    write_clip(videos / "000.mp4", width, height, frames, places, gop=8, seed=5)
    fakes = {("Deepfakes", "000_001"): (frames, 1), ("FaceSwap", "000_002"): (frames - 4, 2),
             ("Face2Face", "003_004"): (frames, 3)}
    for (method, name), (count, patch_seed) in fakes.items():
        patch = swapped_patch(patch_seed)
        swap = (lambda p: lambda index, frame: render_frame(width, height, places(index, frames), 5, p))(patch)
        write_clip(root / "manipulated_sequences" / method / "c23" / "videos" / f"{name}.mp4", width, height,
                   count, places, gop=8, seed=5, frame_filter=swap)
    (root / "splits").mkdir(parents=True, exist_ok=True)
    pairs = [["000", "001"], ["000", "002"], ["003", "004"]]
    (root / "splits" / "train.json").write_text(json.dumps(pairs))
    for split in ("val", "test"):
        (root / "splits" / f"{split}.json").write_text("[]")
    return root
