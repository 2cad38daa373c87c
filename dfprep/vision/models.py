"""Landmark/detector model registry: names → verified dlib model files, resolved before any work."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from dfprep.config import paths
from dfprep.config import read_yaml
from dfprep.errors import ModelError, one_line

KINDS = ("shape_predictor", "cnn_detector", "face_descriptor")


@dataclass(frozen=True)
class ModelEntry:
    """One known model as listed in landmarks/models.yaml."""

    name: str
    kind: str
    points: int
    file: str
    sha256: str | None
    package: str | None
    source: str


@dataclass(frozen=True)
class ResolvedModel:
    """A model file found on disk, checked against the registry."""

    name: str
    kind: str
    points: int
    path: Path
    sha256: str


def _registry_folders(folder: Path | None) -> list[Path]:
    """The folders to search: the one given (tests, tools), else the landmark search path."""
    return [folder] if folder is not None else paths.landmark_dirs()


def manifest(folder: Path | None = None) -> list[ModelEntry]:
    """The registry entries: every models.yaml along the search path, the first entry of a name winning."""
    folders = _registry_folders(folder)
    files = [f / "models.yaml" for f in folders if (f / "models.yaml").is_file()]
    if not files:
        raise ModelError(f"landmark registry not found: no models.yaml in {paths.shown_dirs(folders)}")
    entries: dict[str, ModelEntry] = {}
    for path in files:
        for entry in _entries(path):
            entries.setdefault(entry.name, entry)
    return list(entries.values())


def _entries(path: Path) -> list[ModelEntry]:
    """The entries of one models.yaml."""
    rows = read_yaml(path).get("models") or []
    try:
        return [ModelEntry(**{k: row.get(k) for k in ModelEntry.__dataclass_fields__}) for row in rows]
    except (TypeError, AttributeError) as exc:
        raise ModelError(f"{path}: malformed model entry ({exc})") from None


_checksums: dict[tuple[str, int, float], Future[str]] = {}  # (path, size, mtime) → its sha256, done or in flight
_checksums_lock = threading.Lock()


def _sha256(path: str) -> str:
    """sha256 of a file, read 1 MB at a time (reads and hashing release the GIL)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a model file, computed once while the file is unchanged (predictors are ~100 MB): a caller that
    asks while another thread is hashing the same file waits for that result instead of hashing it again."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime)
    with _checksums_lock:
        pending = _checksums.get(key)
        mine = pending is None
        if mine:
            pending = _checksums[key] = Future()
    if mine:
        try:
            pending.set_result(_sha256(str(path)))
        except BaseException as exc:  # the waiters see the same error; a later call tries afresh
            with _checksums_lock:
                _checksums.pop(key, None)
            pending.set_exception(exc)
    return pending.result()


def checksum_ahead(name_or_path: str) -> None:
    """Start hashing a model's file in the background (~60 ms for a 68-point predictor, GIL released) while the
    caller catalogues videos; `resolve_model` then finds the result. Any failure is left for it to report."""
    def resolve_quietly() -> None:
        try:
            resolve_model(name_or_path)
        except Exception:  # noqa: BLE001 - the caller's own resolve_model raises it with its message
            pass

    threading.Thread(target=resolve_quietly, name="dfprep-checksum", daemon=True).start()


def package_models_dir(package: str) -> Path | None:
    """The models/ folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _candidates(entry: ModelEntry, folders: list[Path]) -> list[Path]:
    """Where an entry's file may be: the drop-in folders in order, then its package."""
    places = [folder / entry.file for folder in folders]
    if entry.package:
        package_dir = package_models_dir(entry.package)
        if package_dir is not None:
            places.append(package_dir / entry.file)
    return places


def _by_checksum(entries: list[ModelEntry], folders: list[Path]) -> dict[str, Path]:
    """Drop-in files (any name) whose sha256 matches a registry entry: name → path (earlier folders win)."""
    pinned = {e.sha256: e.name for e in entries if e.sha256}
    found: dict[str, Path] = {}
    for path in [p for f in folders if f.is_dir() for p in sorted(f.glob("*.dat"))]:
        name = pinned.get(file_sha256(path))
        if name and name not in found:
            found[name] = path
    return found


def resolve_model(name_or_path: str, folder: Path | None = None) -> ResolvedModel:
    """Find, checksum and describe a model given a registry name or a file path."""
    folders = _registry_folders(folder)
    entries = manifest(folder)
    by_name = {e.name: e for e in entries}
    if name_or_path not in by_name:
        return _resolve_path(Path(name_or_path), entries)
    entry = by_name[name_or_path]
    path = next((p for p in _candidates(entry, folders) if p.is_file()), None)
    if path is None:
        path = _by_checksum(entries, folders).get(entry.name)
    if path is None:
        raise ModelError(f"model '{entry.name}' not found in {paths.shown_dirs(folders)} (get it: {entry.source})")
    digest = file_sha256(path)
    if entry.sha256 and digest != entry.sha256:
        raise ModelError(f"model '{entry.name}' at {path} is corrupt or a different file: sha256 {digest[:12]}… "
                         f"expected {entry.sha256[:12]}…")
    return ResolvedModel(entry.name, entry.kind, entry.points, path, digest)


def locate(model: ResolvedModel) -> ResolvedModel:
    """This machine's copy of a model the driver resolved: the driver's path when this machine has it, else
    the registry's resolution here (another install path, another landmarks folder), checked by sha256."""
    if model.path.is_file():
        return model
    try:
        local = resolve_model(model.name)
    except ModelError:
        local = None
    if local is None or local.sha256 != model.sha256:
        raise ModelError(f"model '{model.name}' (sha256 {model.sha256[:12]}…) is not on this machine: put it at "
                         f"{model.path} or into one of {paths.shown_dirs(paths.landmark_dirs())}")
    return local


def _resolve_path(path: Path, entries: list[ModelEntry]) -> ResolvedModel:
    """A model given by path: recognised by checksum, else by file name, else a shape predictor."""
    if not path.is_file():
        known = ", ".join(e.name for e in entries)
        raise ModelError(f"model '{path}' is neither a known name ({known}) nor an existing file")
    digest = file_sha256(path)
    match = next((e for e in entries if e.sha256 == digest), None)
    match = match or next((e for e in entries if e.file == path.name and not e.sha256), None)
    if match is not None:
        return ResolvedModel(match.name, match.kind, match.points, path, digest)
    return ResolvedModel(path.stem, "shape_predictor", 0, path, digest)


# dlib documents its shape predictor as safe to share between threads; its CNN detector and descriptor nets
# keep per-call state, so each thread that uses them loads its own copy.
SHARED_KINDS = frozenset({"shape_predictor"})


def load_dlib(kind: str, path: str | os.PathLike[str]) -> Any:
    """The dlib object of a model file, loaded once per process (a net: once per thread): the up-front check
    and the extractor share it (a 68-point predictor takes ~0.9 s to load). A changed file is loaded afresh."""
    stat = os.stat(path)
    owner = 0 if kind in SHARED_KINDS else threading.get_ident()
    return _load_dlib(kind, os.fspath(path), stat.st_size, stat.st_mtime_ns, owner)


@lru_cache(maxsize=16)
def _load_dlib(kind: str, path: str, size: int, mtime_ns: int, owner: int) -> Any:
    """Load one model with dlib for `owner` (0: every thread; errors are not cached: lru_cache keeps results)."""
    import dlib

    loaders = {"shape_predictor": dlib.shape_predictor, "cnn_detector": dlib.cnn_face_detection_model_v1,
               "face_descriptor": dlib.face_recognition_model_v1}
    return loaders[kind](path)


def load_check(model: ResolvedModel) -> int:
    """Load the model with dlib (a corrupt file fails here, not mid-run); return its point count."""
    import dlib
    import numpy as np

    try:
        loaded = load_dlib(model.kind, model.path)
    except RuntimeError as exc:
        reason = one_line(exc, fallback="unreadable")
        raise ModelError(f"model '{model.name}' at {model.path} cannot be loaded by dlib ({reason})") from None
    if model.kind != "shape_predictor":
        return 0
    points = loaded(np.zeros((64, 64, 3), np.uint8), dlib.rectangle(8, 8, 56, 56)).num_parts
    if model.points and points != model.points:
        raise ModelError(f"model '{model.name}' at {model.path} predicts {points} points, expected {model.points}")
    return points
