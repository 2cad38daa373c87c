"""The demo's clip generator: the astronaut's head (scikit-image's bundled photo) moving over a textured
background, encoded as h264. `dfprep demo` builds its videos with it; the tests' fixtures reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import av
import cv2
import numpy as np

STORED_TURNS_PER_ROTATION = -1  # np.rot90 k per 90° of display rotation (checked by tests)
HEAD_BOX = (115, 20, 325, 235)  # x0, y0, x1, y1 of the astronaut's head inside skimage.data.astronaut() (512x512)


@dataclass(frozen=True)
class FacePlacement:
    """Where the head patch sits in a frame: top-left corner and scale of the patch."""

    x: float
    y: float
    scale: float = 1.0


@lru_cache(maxsize=1)
def head_patch() -> np.ndarray:
    """RGB head patch of the astronaut (the one real face in the photo)."""
    from skimage import data  # imported lazily: only the demo and the tests need scikit-image

    x0, y0, x1, y1 = HEAD_BOX
    return np.ascontiguousarray(data.astronaut()[y0:y1, x0:x1])


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, textured, faceless background (deterministic)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 200, size=(max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def render_frame(width: int, height: int, places: Sequence[FacePlacement], seed: int = 0,
                 patch: np.ndarray | None = None) -> np.ndarray:
    """One RGB frame with the head patch pasted at each placement."""
    frame = background(width, height, seed).copy()
    patch = head_patch() if patch is None else patch
    for place in places:
        scaled = cv2.resize(patch, None, fx=place.scale, fy=place.scale, interpolation=cv2.INTER_AREA
                            if place.scale < 1 else cv2.INTER_LINEAR)
        x, y = int(round(place.x)), int(round(place.y))
        h, w = scaled.shape[:2]
        fx0, fy0, fx1, fy1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if fx1 > fx0 and fy1 > fy0:
            frame[fy0:fy1, fx0:fx1] = scaled[fy0 - y:fy1 - y, fx0 - x:fx1 - x]
    return frame


def linear_motion(start: FacePlacement, end: FacePlacement) -> Callable[[int, int], list[FacePlacement]]:
    """A placement function moving one face linearly from start to end over the clip."""

    def places(index: int, total: int) -> list[FacePlacement]:
        t = index / max(total - 1, 1)
        return [FacePlacement(start.x + (end.x - start.x) * t, start.y + (end.y - start.y) * t,
                              start.scale + (end.scale - start.scale) * t)]

    return places


def write_clip(path: Path, width: int, height: int, frames: int,
               places: Callable[[int, int], list[FacePlacement]], fps: int = 25, rotation: int = 0,
               gop: int = 50, seed: int = 0, crf: int = 20,
               frame_filter: Callable[[int, np.ndarray], np.ndarray] | None = None,
               store_turned: bool = False) -> Path:
    """Encode an h264 mp4 whose frames come from `places`; `rotation` is stored as a display matrix.

    With `store_turned` the frames are stored turned the other way, as phones record portrait video,
    so a reader that honours the display matrix shows the upright rendered frames.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    base = background(width, height, seed)
    turns = (rotation // 90) % 4 if store_turned else 0
    coded_w, coded_h = (height, width) if turns % 2 else (width, height)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = coded_w, coded_h, "yuv420p"
        stream.options = {"crf": str(crf), "g": str(gop), "preset": "veryfast", "bf": "2"}
        if rotation:
            stream.set_display_rotation(rotation)
        for index in range(frames):
            frame = render_frame(width, height, places(index, frames), seed) if places else base
            if frame_filter is not None:
                frame = frame_filter(index, frame)
            if turns:
                frame = np.ascontiguousarray(np.rot90(frame, STORED_TURNS_PER_ROTATION * turns))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
