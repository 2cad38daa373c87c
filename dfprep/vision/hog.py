"""dlib's frontal HOG face detector, built once per machine and dlib version instead of once per process.

`dlib.get_frontal_face_detector()` rebuilds the detector from a model compiled into dlib: ~0.2 s holding the GIL,
paid by every `dfprep` command and every Ray actor before its first frame. Its serialized form (155 kB) loads in
~1 ms and detects exactly the same boxes with the same scores, so the first build is saved to the user's cache
folder (`paths.cache_dir()`) under the dlib version's name, with its sha256 beside it. A cache file is loaded only
when it is small and its sha256 matches; anything else (missing, truncated, altered, unwritable folder) falls
back to the build, and a fresh copy replaces the cache file. dfprep writes and replaces only these two names.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import dlib

from dfprep.config.paths import cache_dir

MAX_CACHE_BYTES = 1 << 20  # the serialized detector is 155 kB; a larger file is not dlib's detector: not decoded


def cache_file(folder: Path) -> Path:
    """Where the serialized detector of this dlib version lives in `folder`."""
    return folder / f"frontal-hog-dlib-{dlib.__version__}.svm"


def digest_file(cached: Path) -> Path:
    """The sidecar holding the cached detector's sha256."""
    return cached.with_name(cached.name + ".sha256")


def frontal_hog() -> dlib.fhog_object_detector:
    """dlib's frontal face detector: from the user's cache when a verified copy is there, else built (and cached)."""
    folder = cache_dir()
    if folder is None:
        return dlib.get_frontal_face_detector()
    cached = cache_file(folder)
    loaded = _load_verified(cached)
    if loaded is not None:
        return loaded
    detector = dlib.get_frontal_face_detector()
    _store(detector, cached)
    return detector


def _load_verified(cached: Path) -> dlib.fhog_object_detector | None:
    """The cached detector if the file is small and matches its recorded sha256, else None."""
    try:
        if cached.stat().st_size > MAX_CACHE_BYTES:
            return None
        data = cached.read_bytes()
        expected = digest_file(cached).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if len(data) > MAX_CACHE_BYTES or hashlib.sha256(data).hexdigest() != expected:
        return None
    try:
        return dlib.fhog_object_detector(str(cached))
    except RuntimeError:  # replaced between the check and the load by another process's copy: build instead
        return None


def _store(detector: dlib.fhog_object_detector, cached: Path) -> None:
    """Save the detector and its sha256 atomically (temporary names, then renames); any failure leaves no cache."""
    temporaries: list[str] = []
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".hog-", suffix=".tmp", dir=cached.parent)
        os.close(handle)
        temporaries.append(temporary)
        detector.save(temporary)
        digest = hashlib.sha256(Path(temporary).read_bytes()).hexdigest()
        handle, digest_temporary = tempfile.mkstemp(prefix=".hog-", suffix=".tmp", dir=cached.parent)
        temporaries.append(digest_temporary)
        with os.fdopen(handle, "w", encoding="ascii") as out:
            out.write(digest + "\n")
        os.replace(temporary, cached)
        os.replace(digest_temporary, digest_file(cached))
        temporaries.clear()
    except (OSError, RuntimeError):
        pass  # a read-only or full cache folder only costs the next run the build
    finally:
        for leftover in temporaries:
            try:
                os.unlink(leftover)
            except OSError:
                pass
