"""The catalog's row type and the adapter contract every dataset family implements."""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

from dfprep.errors import LayoutError

REAL, FAKE = 0, 1
SPLITS = ("train", "val", "test")
# File extensions taken as videos: the containers and raw streams FFmpeg (PyAV) commonly reads. A file with
# any other extension is not a video to the catalog (adapters that scan folders report how many they skipped).
VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mov", ".qt", ".3gp", ".3g2", ".mj2",  # ISO/QuickTime family
    ".mkv", ".webm", ".avi", ".divx", ".flv", ".f4v", ".wmv", ".asf", ".ogv", ".mxf", ".dv", ".nut",
    ".rm", ".rmvb",
    ".mpg", ".mpeg", ".mpe", ".m1v", ".m2v", ".mpv", ".vob",  # MPEG program streams and elementary video
    ".ts", ".m2ts", ".mts", ".m2t", ".tp", ".trp",  # MPEG transport streams (broadcast, AVCHD)
    ".h264", ".264", ".avc", ".h265", ".265", ".hevc", ".ivf", ".y4m", ".mjpeg", ".mjpg",  # raw streams
)


@dataclass(frozen=True)
class VideoRecord:
    """One input video as the catalog sees it, before any pixel is touched."""

    video_id: str  # dataset/method/compression/stem, globally unique
    path: str  # absolute path
    dataset: str
    method: str
    compression: str
    split: str  # train | val | test | unassigned
    label: int  # 0 real, 1 fake
    family_id: str  # video_id of the original this video derives from (itself for originals)
    source_id: str | None = None  # identity whose face was inserted (fakes)
    target_id: str | None = None  # identity of the person in the original footage
    mask_path: str | None = None  # manipulation mask video when the dataset ships one
    fold: str | None = None  # dataset-defined fold (DFDC part), for cross-validation
    status: str = "found"  # found | missing (metadata names a file that is absent)
    error: str = ""  # one-line reason when status != found

    def to_row(self) -> dict[str, Any]:
        """Plain dict for parquet/JSON output."""
        return dataclasses.asdict(self)


def make_video_id(dataset: str, method: str, compression: str, stem: str) -> str:
    """The canonical id: dataset/method/compression/stem."""
    return f"{dataset}/{method}/{compression}/{stem}"


def video_on_disk(dataset: str, path: Path | str, method: str, compression: str, split: str, label: int, *,
                  stem: str | None = None, family_id: str | None = None, **identities: Any) -> VideoRecord:
    """A record for a file the adapter found: id from dataset/method/compression/stem, own family by default."""
    video_id = make_video_id(dataset, method, compression, stem if stem is not None else Path(path).stem)
    return VideoRecord(video_id=video_id, path=absolute(path), dataset=dataset, method=method,
                       compression=compression, split=split, label=label, family_id=family_id or video_id,
                       **identities)


def list_videos(folder: Path) -> list[Path]:
    """Video files directly inside `folder`, sorted; [] when the folder is absent."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())


def absolute(path: Path | str) -> str:
    """Absolute path string without resolving symlinks (keeps the user's layout visible)."""
    return os.path.abspath(path)


class DatasetAdapter(ABC):
    """Turns one dataset family's folder layout into VideoRecords."""

    name: ClassVar[str]
    summary: ClassVar[str]
    layout: ClassVar[str]  # the expected tree, shown by `dfprep datasets`
    labels: ClassVar[str]  # label/split convention, shown by `dfprep datasets`

    # `options` is the adapter's own dataclass from dfprep.config (ADAPTER_OPTIONS[name], e.g. FolderOptions),
    # built and checked by dfprep.config.dataset_options: an adapter never sees another adapter's keys.
    @abstractmethod
    def check_layout(self, root: Path, options: Any) -> None:
        """Raise LayoutError naming the expected and the found folders when root does not match."""

    @abstractmethod
    def records(self, root: Path, options: Any) -> Iterator[VideoRecord]:
        """Yield every video of the dataset, deterministically ordered."""

    def layout_error(self, root: Path, expected: str) -> LayoutError:
        """A LayoutError listing what was expected and what the root actually holds."""
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir()) if root.is_dir() else []
        shown = ", ".join(found[:12]) + (" …" if len(found) > 12 else "") if found else "nothing"
        return LayoutError(f"{root} is not a {self.name} root: expected {expected}; found {shown}")
