"""DeeperForensics-1.0: DF-VAE fakes per perturbation, split lists, and their FF++ youtube originals."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from dfprep.catalog.base import (
    FAKE,
    REAL,
    SPLITS,
    DatasetAdapter,
    VideoRecord,
    absolute,
    list_videos,
    make_video_id,
    video_on_disk,
)
from dfprep.config import DeeperForensicsOptions
from dfprep.errors import LayoutError

FAKE_METHOD = "DF-VAE"
REAL_METHOD = "youtube"
UNASSIGNED = "unassigned"
# Which FF++ compression the reals come from: the first one present under <ffpp_root>.
REAL_COMPRESSIONS = ("c23", "raw", "c40")
# When a real is targeted by fakes of several splits it goes to the strictest, so test footage never trains.
STRICTNESS = (UNASSIGNED, "train", "val", "test")


def stricter(a: str, b: str) -> str:
    """The more restrictive of two splits (test > val > train > unassigned)."""
    return max(a, b, key=STRICTNESS.index)


def list_entry_stem(line: str) -> str:
    """A split-list line (a file name, possibly with a path) reduced to the video's stem."""
    return Path(line.strip().replace("\\", "/")).stem


def load_split_lists(folder: Path) -> dict[str, str]:
    """Fake stem → split from lists/splits/{train,val,test}.txt; absent files assign nothing."""
    splits: dict[str, str] = {}
    for split in SPLITS:
        path = folder / f"{split}.txt"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                stem = list_entry_stem(line)
                splits[stem] = stricter(splits.get(stem, UNASSIGNED), split)
    return splits


def real_compression(options: DeeperForensicsOptions) -> str:
    """The FF++ compression the reals are taken from: c23, else raw, else c40 (c23 without ffpp_root)."""
    if options.ffpp_root:
        youtube = Path(options.ffpp_root) / "original_sequences" / REAL_METHOD
        for compression in REAL_COMPRESSIONS:
            if (youtube / compression / "videos").is_dir():
                return compression
    return REAL_COMPRESSIONS[0]


def split_name(stem: str) -> tuple[str, str] | None:
    """`000_M101` → (FF++ target id, DeeperForensics actor id); None for an unpaired name."""
    target, _, actor = stem.partition("_")
    return (target, actor) if target and actor else None


class DeeperForensicsAdapter(DatasetAdapter):
    """DeeperForensics-1.0 manipulated videos; its reals come from an FF++ tree (dataset.ffpp_root)."""

    name = "deeperforensics"
    summary = (
        "DeeperForensics-1.0 DF-VAE fakes per perturbation; reals are FF++ youtube videos (set dataset.ffpp_root)"
    )
    layout = """\
<root>/
  manipulated_videos/<perturbation>/<ffpp id>_<actor>.mp4   end_to_end, end_to_end_level_1_..., ...
  lists/splits/{train,val,test}.txt                        one file name per line (e.g. 000_M101.mp4)
<dataset.ffpp_root>/original_sequences/youtube/{c23,raw,c40}/videos/<ffpp id>.mp4   (the reals)"""
    labels = (
        "fakes 1 (split from lists/splits, unlisted 'unassigned'); reals 0 only when dataset.ffpp_root is set: one "
        "per FF++ id any fake targets (first of c23/raw/c40), in the strictest split of its fakes (test > val > train)"
    )

    def check_layout(self, root: Path, options: DeeperForensicsOptions) -> None:
        """Need manipulated_videos/; a configured ffpp_root must hold FF++ youtube originals."""
        if not (root / "manipulated_videos").is_dir():
            raise self.layout_error(root, "manipulated_videos/<perturbation>/ and lists/splits/")
        if options.ffpp_root:
            youtube = Path(options.ffpp_root) / "original_sequences" / REAL_METHOD
            if not any((youtube / c / "videos").is_dir() for c in REAL_COMPRESSIONS):
                raise LayoutError(
                    f"dataset.ffpp_root: {options.ffpp_root} has no original_sequences/youtube/"
                    f"{{c23,raw,c40}}/videos (DeeperForensics takes its reals from there)"
                )

    def records(self, root: Path, options: DeeperForensicsOptions) -> Iterator[VideoRecord]:
        """Reals first (sorted by FF++ id, when ffpp_root is set), then fakes by perturbation and name."""
        splits = load_split_lists(root / "lists" / "splits")
        compression = real_compression(options)
        fakes = [
            self.fake_record(path, folder.name, splits, compression)
            for folder in sorted(p for p in (root / "manipulated_videos").iterdir() if p.is_dir())
            for path in list_videos(folder)
        ]
        if options.ffpp_root:
            yield from self.real_records(fakes, Path(options.ffpp_root), compression)
        yield from fakes

    def fake_record(self, path: Path, perturbation: str, splits: dict[str, str], compression: str) -> VideoRecord:
        """A DF-VAE fake: footage from an FF++ youtube video, face from a DeeperForensics actor."""
        pair = split_name(path.stem)
        split = splits.get(path.stem, UNASSIGNED)
        if pair is None:
            return video_on_disk(self.name, path, FAKE_METHOD, perturbation, split, FAKE)
        return video_on_disk(self.name, path, FAKE_METHOD, perturbation, split, FAKE,
                             family_id=make_video_id(self.name, REAL_METHOD, compression, pair[0]),
                             source_id=pair[1], target_id=pair[0])

    def real_records(self, fakes: list[VideoRecord], ffpp_root: Path, compression: str) -> Iterator[VideoRecord]:
        """One real per FF++ original any fake targets; absent originals are reported as missing."""
        split_of: dict[str, str] = {}
        for fake in fakes:
            if fake.target_id is not None:
                split_of[fake.target_id] = stricter(split_of.get(fake.target_id, UNASSIGNED), fake.split)
        folder = ffpp_root / "original_sequences" / REAL_METHOD / compression / "videos"
        for target in sorted(split_of):
            path = folder / f"{target}.mp4"
            present = path.is_file()
            yield VideoRecord(
                video_id=make_video_id(self.name, REAL_METHOD, compression, target),
                path=absolute(path),
                dataset=self.name,
                method=REAL_METHOD,
                compression=compression,
                split=split_of[target],
                label=REAL,
                family_id=make_video_id(self.name, REAL_METHOD, compression, target),
                target_id=target,
                status="found" if present else "missing",
                error="" if present else f"FF++ original {target}.mp4 not found in {folder}",
            )
