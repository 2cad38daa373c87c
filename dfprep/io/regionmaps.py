"""Region maps as the shards carry them: [0, 1] floats ↔ 8- or 16-bit grayscale PNG, thresholding, and the
zoo checkpoints CAM maps are made from (plain bytes and their sha256, never unpickled here)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dfprep.errors import RegionMapError
from dfprep.io.payloads import PayloadError, decode_image

MAP_BITS = (8, 16)  # landmark maps: 8 bits; CAM maps: 16, because erasing ranks their values (PRLE keeps floats)


def apply_threshold(region_map: np.ndarray, threshold: float) -> np.ndarray:
    """Zero every value ≤ threshold (PRLE keeps only the confidently salient pixels); the rest is unchanged."""
    return np.where(region_map > threshold, region_map, 0.0).astype(np.float32)


def encode_map_png(region_map: np.ndarray, bits: int = 8) -> bytes:
    """A [0, 1] float map as the grayscale PNG the shards carry: value · 255 (8 bits) or · 65535 (16 bits)."""
    if bits not in MAP_BITS:
        raise RegionMapError(f"map PNGs hold 8 or 16 bits, not {bits}")
    top, dtype = (255, np.uint8) if bits == 8 else (65535, np.uint16)
    levels = np.rint(np.clip(np.asarray(region_map, dtype=np.float32), 0.0, 1.0) * top).astype(dtype)
    ok, buffer = cv2.imencode(".png", levels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RegionMapError("cannot encode a region map as PNG")
    return buffer.tobytes()


def decode_map_png(payload: bytes) -> np.ndarray:
    """The inverse of encode_map_png, 8- or 16-bit alike: (H, W) float32 in [0, 1]; size checked from the header first."""
    try:
        levels = decode_image(payload, cv2.IMREAD_ANYDEPTH)
    except PayloadError as exc:
        raise RegionMapError(f"cannot decode a region map PNG ({exc})") from None
    if levels.ndim != 2 or levels.dtype not in (np.uint8, np.uint16):
        raise RegionMapError("cannot decode a region map PNG (expected 8- or 16-bit grayscale)")
    return levels.astype(np.float32) / (255.0 if levels.dtype == np.uint8 else 65535.0)


@dataclass(frozen=True)
class ZooCheckpoint:
    """One zoo member as plain data: file name, checksum and raw bytes (loaded with weights_only=True)."""

    file: str
    sha256: str
    payload: bytes

    @classmethod
    def read(cls, path: str | Path, expected_sha256: str | None = None) -> "ZooCheckpoint":
        """Read a checkpoint file and fingerprint it; a worker checks it sees the file the driver saw."""
        try:
            payload = Path(path).read_bytes()
        except OSError as exc:
            raise RegionMapError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
        digest = hashlib.sha256(payload).hexdigest()
        if expected_sha256 is not None and digest != expected_sha256:
            raise RegionMapError(f"checkpoint {path} changed during the run (sha256 {digest[:12]}…, "
                                 f"expected {expected_sha256[:12]}…)")
        return cls(Path(path).name, digest, payload)
