"""A decoded frame's RGB pixels, converted from the decoder's YUV only where a stage reads them.

Converting a whole frame to RGB (swscale) was the largest per-face cost after decoding: 13 ms for a 1080p
4:4:4 frame, while tracking, landmarks and the crop read only the region around the face. `FramePixels`
converts the regions asked for into one frame-sized array, and the pixels it delivers are exactly those of a
whole-frame conversion: swscale converts each pixel from the YUV samples at its own position (measured:
identical at any offset for 4:4:4, at even offsets for 4:2:0), the region is cut on even coordinates, and a
margin of CONVERT_MARGIN px around it absorbs any converter that looks at neighbours. Formats not measured,
and rotated frames, are converted whole.
"""

from __future__ import annotations

from typing import Union

import av
import cv2
import numpy as np

# Pixel formats whose region conversion was measured identical to the whole frame's (tests/test_pixels.py).
REGION_FORMATS = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"})
# Pixels converted beyond what was asked for on every side (and regions cut on even coordinates).
CONVERT_MARGIN = 8
# A region this large a share of the frame is converted as the whole frame (one call is cheaper than two).
WHOLE_SHARE = 0.6

Region = tuple[int, int, int, int]  # x0, y0, x1, y1 in upright frame pixels, exclusive right/bottom

# cv2.rotate code turning a decoded frame upright, by counterclockwise display rotation.
_UPRIGHT = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}


def upright_rgb(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    """RGB pixels of a whole frame the way a player shows them (display rotation applied)."""
    image = frame.to_ndarray(format="rgb24", threads=1)  # one swscale thread: pools cost more than they save
    return cv2.rotate(image, _UPRIGHT[rotation]) if rotation in _UPRIGHT else image


class FramePixels:
    """One decoded frame's upright RGB pixels, converted region by region as they are asked for."""

    def __init__(self, frame: av.VideoFrame, rotation: int = 0):
        self._frame: av.VideoFrame | None = frame
        self._rotation = rotation
        height, width = (frame.width, frame.height) if rotation in (90, 270) else (frame.height, frame.width)
        self.shape = (height, width, 3)
        self._by_region = rotation == 0 and frame.format.name in REGION_FORMATS
        self._array: np.ndarray | None = None  # frame-sized; valid inside self._valid
        self._valid: Region | None = None  # the one rectangle converted so far (the whole frame once full)

    def full(self) -> np.ndarray:
        """The whole frame, converted once (the decoder's frame is released then)."""
        if self._valid != (0, 0, self.shape[1], self.shape[0]):
            assert self._frame is not None
            self._array = upright_rgb(self._frame, self._rotation)
            self._valid, self._frame = (0, 0, self.shape[1], self.shape[0]), None
        assert self._array is not None
        return self._array

    def region(self, region: Region) -> np.ndarray:
        """The frame-sized array, exact inside `region` (clipped to the frame); other pixels are undefined."""
        if not self._by_region:
            return self.full()
        wanted = self._grown(region)
        valid = self._valid
        if valid is not None and _contains(valid, wanted):
            assert self._array is not None
            return self._array
        if valid is not None:  # one rectangle covers both: a stage never reads what an earlier one converted
            wanted = (min(valid[0], wanted[0]), min(valid[1], wanted[1]),
                      max(valid[2], wanted[2]), max(valid[3], wanted[3]))
        x0, y0, x1, y1 = wanted
        if (x1 - x0) * (y1 - y0) >= WHOLE_SHARE * self.shape[0] * self.shape[1]:
            return self.full()
        if self._array is None:
            self._array = np.zeros(self.shape, np.uint8)  # pages are touched only where regions land
        if x1 <= x0 or y1 <= y0:
            return self._array  # wholly outside the frame: nothing there to read
        assert self._frame is not None
        self._array[y0:y1, x0:x1] = _convert(self._frame, wanted)
        self._valid = wanted
        return self._array

    def _grown(self, region: Region) -> Region:
        """`region` with the margin, on even coordinates, inside the frame."""
        height, width = self.shape[:2]
        x0, y0, x1, y1 = (int(np.floor(region[0])), int(np.floor(region[1])), int(np.ceil(region[2])),
                          int(np.ceil(region[3])))
        x0, y0 = max(0, x0 - CONVERT_MARGIN) & ~1, max(0, y0 - CONVERT_MARGIN) & ~1
        x1, y1 = min(width, x1 + CONVERT_MARGIN + 1) & ~1, min(height, y1 + CONVERT_MARGIN + 1) & ~1
        x1, y1 = (width if x1 >= width - 1 else x1), (height if y1 >= height - 1 else y1)
        return x0, y0, max(x0, x1), max(y0, y1)


Picture = Union[np.ndarray, FramePixels]  # what the face stages accept: an RGB array, or a frame's pixels


def pixels_in(picture: Picture, region: Region | None = None) -> np.ndarray:
    """An RGB array exact inside `region` (the whole picture when None)."""
    if isinstance(picture, np.ndarray):
        return picture
    return picture.full() if region is None else picture.region(region)


def _contains(outer: Region, inner: Region) -> bool:
    """Whether `inner` lies inside `outer`."""
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _convert(frame: av.VideoFrame, region: Region) -> np.ndarray:
    """swscale's RGB of one region: the region's planes copied into a small frame of the same format."""
    x0, y0, x1, y1 = region
    small = av.VideoFrame(x1 - x0, y1 - y0, frame.format.name)
    for source, target in zip(frame.planes, small.planes):
        shift_x = 0 if source.width == frame.width else 1  # chroma planes of 4:2:x formats: half width
        shift_y = 0 if source.height == frame.height else 1
        rows = np.frombuffer(source, np.uint8).reshape(source.height, source.line_size)
        cut = rows[y0 >> shift_y:(y1 + shift_y) >> shift_y, x0 >> shift_x:(x1 + shift_x) >> shift_x]
        into = np.frombuffer(target, np.uint8).reshape(target.height, target.line_size)
        into[:cut.shape[0], :cut.shape[1]] = cut
    small.colorspace, small.color_range = frame.colorspace, frame.color_range
    return small.to_ndarray(format="rgb24", threads=1)
