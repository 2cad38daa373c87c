"""DFDC preview: one dataset.json indexing every video with its label and set."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from dfprep.catalog.base import FAKE, REAL, DatasetAdapter, VideoRecord, absolute, make_video_id
from dfprep.config import DFDCPOptions
from dfprep.errors import LayoutError, one_line

DATASET = "dfdcp"
COMPRESSION = "raw"
INDEX = "dataset.json"
ORIGINALS_FOLDER = "original_videos"
_LABELS = {"real": REAL, "fake": FAKE}
_SETS = {"train": "train", "test": "test"}


def read_index(path: Path) -> dict[str, Any]:
    """dataset.json as a mapping; the whole dataset hangs on it, so an unreadable one is a layout error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"{path}: not readable JSON ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise LayoutError(f"{path}: expected an object mapping video paths to their entries")
    return data


def entry_path(index: Path, relative: str) -> PurePosixPath:
    """The entry's path relative to root, refusing ones that would escape it or make unsafe ids."""
    path = PurePosixPath(relative.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or len(path.parts) < 2:
        raise LayoutError(f"{index}: entry {relative!r} must be a relative '<method>/.../<file>' path")
    return path


def entry_label(index: Path, relative: str, info: Any) -> int:
    """The entry's 0-real/1-fake label; an entry without one is a broken index."""
    label = _LABELS.get(str(info.get("label", "")).lower()) if isinstance(info, dict) else None
    if label is None:
        raise LayoutError(f"{index}: entry {relative!r} has no 'label' of real or fake")
    return label


def family_of(target_id: str | None, video_id: str) -> str:
    """The filmed person: DFDCP never names a fake's exact original, so a family is one person's clips."""
    return f"{DATASET}/family/{target_id}" if target_id else video_id


class DFDCPreviewAdapter(DatasetAdapter):
    """The DFDC preview release (~5k videos, methods A and B) as shipped."""

    name = "dfdcp"
    summary = "DFDC preview: ~5k videos of 66 actors, two face-swap methods, dataset.json index"
    layout = (
        "<root>/\n"
        "  dataset.json                          {\"<path>\": {\"label\": \"real\"|\"fake\", \"set\": \"train\"|\"test\"}}\n"
        "  original_videos/<person>/<clip>.mp4\n"
        "  method_A/<person>/<person>_A/<clip>.mp4  (likewise method_B)"
    )
    labels = (
        "0 real / 1 fake from dataset.json 'label'; split from 'set' (train/test, anything else unassigned).\n"
        "family_id = dfdcp/family/<person> for originals and fakes alike (the index names no exact original); "
        "indexed but absent files are 'missing' records."
    )

    def check_layout(self, root: Path, options: DFDCPOptions) -> None:
        """Require the dataset.json index at the root."""
        if not (root / INDEX).is_file():
            raise self.layout_error(root, f"{INDEX} beside {ORIGINALS_FOLDER}/, method_A/, method_B/")

    def records(self, root: Path, options: DFDCPOptions) -> Iterator[VideoRecord]:
        """One row per indexed video, sorted by video id."""
        index = root / INDEX
        rows = [self._record(root, relative, info) for relative, info in read_index(index).items()]
        yield from sorted(rows, key=lambda row: row.video_id)

    def _record(self, root: Path, relative: str, info: Any) -> VideoRecord:
        """One indexed video: method and person from its path, id stem from the whole path (names repeat)."""
        index = root / INDEX
        path = entry_path(index, relative)
        label = entry_label(index, relative, info)
        folder = path.parts[0]
        method = "original" if folder == ORIGINALS_FOLDER else folder
        target_id = path.parts[1] if len(path.parts) > 2 else None
        video_id = make_video_id(DATASET, method, COMPRESSION, path.with_suffix("").as_posix().replace("/", "__"))
        on_disk = root.joinpath(*path.parts)
        present = on_disk.is_file()
        return VideoRecord(
            video_id=video_id, path=absolute(on_disk), dataset=DATASET, method=method, compression=COMPRESSION,
            split=_SETS.get(str(info.get("set", "")).lower(), "unassigned"), label=label,
            family_id=family_of(target_id, video_id), target_id=target_id,
            status="found" if present else "missing", error="" if present else f"named in {INDEX} but absent",
        )
