"""Sample keys: stable, unique and safe as tar member names and file names, whatever the video id holds."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_SLUG = 120


def video_slug(video_id: str) -> str:
    """A key-safe form of a video id: no dots, slashes, NUL or `..`; a hash suffix keeps it unique."""
    parts = [_UNSAFE.sub("_", part).strip("_") or "_" for part in video_id.split("/")]
    slug = "-".join(parts)
    if slug != video_id.replace("/", "-") or len(slug) > _MAX_SLUG:
        digest = hashlib.sha1(video_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        slug = f"{slug[:_MAX_SLUG]}-{digest}"
    return slug


def sample_key(video_id: str, frame: int, track_id: int | None = None) -> str:
    """Stable, unique sample key: <video slug>-<frame>[-t<track>]."""
    key = f"{video_slug(video_id)}-{frame:06d}"
    return key if track_id is None else f"{key}-t{track_id}"
