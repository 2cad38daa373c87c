"""Bounded decoding of untrusted shard members: image sizes read from headers, plain .npy, small JSON, crc32s.

A shard is a file users download and share. A 875 KB PNG can declare 30000x30000 pixels (13 GB once
decoded), a tar header can declare a 2 GB member, a JSON member can nest deep enough to exhaust the
stack. Every reader of shards (maps, preview, the torch consumer) decodes through these functions, so each
such member becomes a `PayloadError` (the reader adds the shard and key) before any memory is spent.
"""

from __future__ import annotations

import io
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np

from dfprep.errors import DfprepError

CRC_FIELD = "crc32"  # in `<key>.json`: member extension → crc32 of its payload, for every other member


@dataclass(frozen=True)
class ReadLimits:
    """What a reader accepts from one shard member; larger members are refused before they are read."""

    max_member_bytes: int = 64 * 2**20  # a 2048 px PNG crop is ~12 MB
    max_image_pixels: int = 4096 * 4096  # crops are at most 2048 px (alignment.size); 4x that is generous
    max_json_bytes: int = 2**20  # a sample's json is ~3 KB
    max_landmarks: int = 10_000  # dlib models give 5, 68 or 81 points
    max_members: int = 200_000  # members one tar may hold (a shard of ~1.5k samples has ~6k)


DEFAULT_LIMITS = ReadLimits()


class PayloadError(DfprepError):
    """A member is malformed or over a limit; the caller names the shard and key."""


# ---------------------------------------------------------------- checksums


def member_crcs(members: Mapping[str, bytes]) -> dict[str, int]:
    """crc32 of every member except the json that records them."""
    return {extension: zlib.crc32(payload) for extension, payload in members.items() if extension != "json"}


def crc_mismatch(members: Mapping[str, bytes], recorded: Any) -> str | None:
    """Why the members disagree with the crc32s their json recorded (None when they agree or none were recorded)."""
    if recorded is None:
        return None
    if not isinstance(recorded, dict) or not all(isinstance(v, int) for v in recorded.values()):
        return f"its json's {CRC_FIELD} field is not a mapping of member → integer"
    for extension, payload in members.items():
        if extension in recorded and zlib.crc32(payload) != recorded[extension]:
            return f"member .{extension} does not match its recorded crc32 (damaged bytes)"
    return None


def with_crcs(members: Mapping[str, bytes]) -> dict[str, bytes]:
    """The members with the crc32s of all others recorded in their json member (unchanged without one)."""
    if "json" not in members:
        return dict(members)
    meta = json.loads(members["json"])
    meta[CRC_FIELD] = member_crcs(members)
    return {**members, "json": json.dumps(meta, separators=(",", ":")).encode()}


# ---------------------------------------------------------------- JSON


def load_json(payload: bytes, limits: ReadLimits = DEFAULT_LIMITS) -> Any:
    """A JSON member, refused when over the size limit, invalid or nested deeper than the parser's stack."""
    if len(payload) > limits.max_json_bytes:
        raise PayloadError(f"json of {len(payload)} bytes is over the {limits.max_json_bytes}-byte limit")
    try:
        return json.loads(payload)
    except RecursionError:
        raise PayloadError("json nested too deeply") from None
    except ValueError as exc:
        raise PayloadError(f"invalid json ({exc})") from None


# ---------------------------------------------------------------- images


def _png_size(payload: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk."""
    if payload[:8] != b"\x89PNG\r\n\x1a\n" or payload[12:16] != b"IHDR" or len(payload) < 24:
        return None
    return int.from_bytes(payload[16:20], "big"), int.from_bytes(payload[20:24], "big")


_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0..SOF15, not DHT/JPG/DAC


def _jpeg_size(payload: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's first frame header, walking the marker segments."""
    if payload[:2] != b"\xff\xd8":
        return None
    position = 2
    while position + 4 <= len(payload):
        if payload[position] != 0xFF:
            return None
        marker = payload[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            position += 2
            continue
        length = int.from_bytes(payload[position + 2:position + 4], "big")
        if marker in _JPEG_FRAME_MARKERS:
            if position + 9 > len(payload):
                return None
            height = int.from_bytes(payload[position + 5:position + 7], "big")
            return int.from_bytes(payload[position + 7:position + 9], "big"), height
        if length < 2:
            return None
        position += 2 + length
    return None


def _webp_size(payload: bytes) -> tuple[int, int] | None:
    """(width, height) from a WebP's first chunk (VP8, VP8L or VP8X)."""
    if payload[:4] != b"RIFF" or payload[8:12] != b"WEBP" or len(payload) < 30:
        return None
    chunk = payload[12:16]
    if chunk == b"VP8 ":
        return (int.from_bytes(payload[26:28], "little") & 0x3FFF,
                int.from_bytes(payload[28:30], "little") & 0x3FFF)
    if chunk == b"VP8L":
        bits = int.from_bytes(payload[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8X":
        return 1 + int.from_bytes(payload[24:27], "little"), 1 + int.from_bytes(payload[27:30], "little")
    return None


def image_size(payload: bytes) -> tuple[int, int]:
    """(width, height) a jpg/png/webp declares in its header; anything else is refused (no other decoder runs)."""
    for reader in (_jpeg_size, _png_size, _webp_size):
        size = reader(payload)
        if size is not None:
            return size
    raise PayloadError("not a jpg, png or webp image (or its header is damaged)")


def decode_image(payload: bytes, flags: int = cv2.IMREAD_COLOR, limits: ReadLimits = DEFAULT_LIMITS) -> np.ndarray:
    """cv2.imdecode, only after the header's pixel count is checked against the limit."""
    width, height = image_size(payload)
    if width * height > limits.max_image_pixels:
        raise PayloadError(f"image of {width}x{height} pixels is over the {limits.max_image_pixels}-pixel limit")
    image = cv2.imdecode(np.frombuffer(payload, np.uint8), flags)
    if image is None:
        raise PayloadError("image does not decode")
    return image


# ---------------------------------------------------------------- .npy


_NPY_LAYOUTS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}
_NPY_LAYOUT_CACHE_SIZE = 64


def npy_layout(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    """dtype, shape and Fortran order of an .npy header; parsed once per distinct header (they repeat)."""
    layout = _NPY_LAYOUTS.get(header)
    if layout is None:
        stream = io.BytesIO(header)
        version = np.lib.format.read_magic(stream)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(stream)
        layout = (dtype, tuple(shape), bool(fortran))
        if len(_NPY_LAYOUTS) < _NPY_LAYOUT_CACHE_SIZE:
            _NPY_LAYOUTS[header] = layout
    return layout


def load_plain_npy(payload: bytes) -> np.ndarray:
    """An .npy payload as a read-only view, refusing object arrays and shapes larger than the payload."""
    if payload[:6] != b"\x93NUMPY" or len(payload) < 12:
        raise ValueError("not an .npy payload")
    wide = payload[6] >= 2  # format 2.0+ stores a 4-byte header length
    start = 12 + int.from_bytes(payload[8:12], "little") if wide else 10 + int.from_bytes(payload[8:10], "little")
    try:
        dtype, shape, fortran = npy_layout(payload[:start])
    except (ValueError, SyntaxError, TypeError) as exc:
        raise ValueError(f"unreadable .npy header ({exc})") from None
    if dtype.hasobject:
        raise ValueError("object arrays need pickle, which is never used")
    count = math.prod(shape)  # a Python int: a hostile shape cannot overflow it
    if len(payload) - start < count * dtype.itemsize:
        raise ValueError("payload shorter than its header says")
    return np.frombuffer(payload, dtype, count, start).reshape(shape, order="F" if fortran else "C")


def load_landmarks(payload: bytes, limits: ReadLimits = DEFAULT_LIMITS) -> np.ndarray:
    """`<key>.ldm.npy` as float32 (N, 2): a plain float array of at most `max_landmarks` points."""
    try:
        array = load_plain_npy(payload)
    except ValueError as exc:
        raise PayloadError(f"landmarks are not a plain array ({exc})") from None
    if array.ndim != 2 or array.shape[1] != 2 or array.dtype.kind != "f" or not 0 < len(array) <= limits.max_landmarks:
        raise PayloadError(f"landmarks have shape {array.shape} and dtype {array.dtype}, expected (N, 2) floats "
                           f"with 0 < N <= {limits.max_landmarks}")
    return array.astype(np.float32)
