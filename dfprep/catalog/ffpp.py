"""FaceForensics++: youtube/actors originals, manipulated methods, official pair splits, families."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
from dfprep.config import FFPPOptions
from dfprep.errors import LayoutError

COMPRESSIONS = ("raw", "c23", "c40")
YOUTUBE = "youtube"
DFD_ORIGINALS = "actors"  # DeepFakeDetection's originals live in original_sequences/actors
DFD_FAKES = "DeepFakeDetection"
UNASSIGNED = "unassigned"


@dataclass(frozen=True)
class PairSplits:
    """The official split of each original id and of each unordered [target, source] pair."""

    by_original: dict[str, str] = field(default_factory=dict)
    by_pair: dict[frozenset[str], str] = field(default_factory=dict)

    def of_original(self, video: str) -> str:
        """An original belongs to the split of the pair that contains it."""
        return self.by_original.get(video, UNASSIGNED)

    def of_pair(self, target: str, source: str) -> str:
        """A fake A_B follows the pair [A, B] (listed either way round)."""
        return self.by_pair.get(frozenset((target, source)), UNASSIGNED)


@dataclass(frozen=True)
class Lineage:
    """Where a fake comes from: the footage's identity, the inserted face, and its original video."""

    target_id: str
    source_id: str
    original_method: str
    original_stem: str


def split_folder(root: Path, options: FFPPOptions) -> Path:
    """options.splits when given, else the splits/ folder next to the sequences."""
    return Path(options.splits) if options.splits else root / "splits"


def read_split_pairs(path: Path) -> list[tuple[str, str]]:
    """One official split file: a JSON list of [target, source] id pairs."""
    try:
        pairs = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LayoutError(f"{path}: cannot read the FF++ split file ({exc})") from None
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise LayoutError(f"{path}: expected a JSON list of [target, source] id pairs")
    return [(str(a), str(b)) for a, b in pairs]


def load_pair_splits(folder: Path) -> PairSplits:
    """Every split file present in `folder`; absent files leave their videos unassigned."""
    splits = PairSplits()
    for split in SPLITS:  # later files win, so a (faulty) duplicate lands in the stricter split
        path = folder / f"{split}.json"
        if not path.is_file():
            continue
        for target, source in read_split_pairs(path):
            splits.by_original[target] = split
            splits.by_original[source] = split
            splits.by_pair[frozenset((target, source))] = split
    return splits


def video_folders(category: Path) -> Iterator[tuple[str, str, Path]]:
    """(method, compression, videos folder) for every method/compression present, sorted."""
    if not category.is_dir():
        return
    for method_dir in sorted(p for p in category.iterdir() if p.is_dir()):
        for compression in COMPRESSIONS:
            folder = method_dir / compression / "videos"
            if folder.is_dir():
                yield method_dir.name, compression, folder


def parse_lineage(method: str, stem: str) -> Lineage | None:
    """Read target, source and original from a fake's name; None when the name has no pairing."""
    if method == DFD_FAKES:  # 01_02__exit_phone_room__YVGY8LOK → original actors/01__exit_phone_room
        parts = stem.split("__")
        actors = parts[0].split("_")
        if len(parts) < 2 or len(actors) != 2:
            return None
        return Lineage(actors[0], actors[1], DFD_ORIGINALS, f"{actors[0]}__{parts[1]}")
    ids = stem.split("_")
    if len(ids) != 2:
        return None
    return Lineage(ids[0], ids[1], YOUTUBE, ids[0])


def original_identity(method: str, stem: str) -> str:
    """The person in an original: the youtube id, or the actor id before `__scene`."""
    return stem.split("__")[0] if method == DFD_ORIGINALS else stem


class FaceForensicsAdapter(DatasetAdapter):
    """FaceForensics++ as downloaded by its official script, DeepFakeDetection included."""

    name = "ffpp"
    summary = "FaceForensics++: youtube/actors originals and 6 manipulation methods at raw/c23/c40"
    layout = """\
<root>/
  original_sequences/{youtube,actors}/{raw,c23,c40}/videos/*.mp4
  manipulated_sequences/{Deepfakes,Face2Face,FaceSwap,NeuralTextures,FaceShifter,DeepFakeDetection}/
      {raw,c23,c40}/videos/*.mp4         fakes named <target>_<source> (DFD: 01_02__scene__CODE)
      masks/videos/<fake>.mp4            manipulation masks (optional)
  splits/{train,val,test}.json           official [target, source] pairs (or dataset.splits)"""
    labels = (
        "originals 0, manipulated 1; splits from the official pair lists (an original and both A_B/B_A "
        "follow their pair), DeepFakeDetection and actors use dataset.dfd_split, unlisted ids are 'unassigned'"
    )

    def check_layout(self, root: Path, options: FFPPOptions) -> None:
        """Need at least one of the two sequence folders; an explicit splits folder must exist."""
        if not any((root / part).is_dir() for part in ("original_sequences", "manipulated_sequences")):
            raise self.layout_error(root, "original_sequences/ and/or manipulated_sequences/")
        if options.splits and not Path(options.splits).is_dir():
            raise LayoutError(f"dataset.splits: {options.splits} is not a folder of train/val/test.json")

    def records(self, root: Path, options: FFPPOptions) -> Iterator[VideoRecord]:
        """Originals first, then fakes, each by method, compression and file name."""
        splits = load_pair_splits(split_folder(root, options))
        for method, compression, folder in video_folders(root / "original_sequences"):
            for path in list_videos(folder):
                yield self.original_record(path, method, compression, splits, options)
        for method, compression, folder in video_folders(root / "manipulated_sequences"):
            masks = {p.stem: p for p in list_videos(folder.parent.parent / "masks" / "videos")}
            for path in list_videos(folder):
                yield self.fake_record(path, method, compression, splits, options, masks.get(path.stem))

    def original_record(
        self, path: Path, method: str, compression: str, splits: PairSplits, options: FFPPOptions
    ) -> VideoRecord:
        """An original is its own family; its split comes from its pair (DFD actors: dfd_split)."""
        split = options.dfd_split if method == DFD_ORIGINALS else splits.of_original(path.stem)
        return video_on_disk(self.name, path, method, compression, split, REAL,
                             target_id=original_identity(method, path.stem))

    def fake_record(
        self,
        path: Path,
        method: str,
        compression: str,
        splits: PairSplits,
        options: FFPPOptions,
        mask: Path | None,
    ) -> VideoRecord:
        """A fake points at its original's id (same compression) even when that file is absent."""
        lineage = parse_lineage(method, path.stem)
        if method == DFD_FAKES:
            split = options.dfd_split
        else:
            split = splits.of_pair(lineage.target_id, lineage.source_id) if lineage else UNASSIGNED
        if lineage is None:
            return video_on_disk(self.name, path, method, compression, split, FAKE,
                                 mask_path=absolute(mask) if mask else None)
        family_id = make_video_id(self.name, lineage.original_method, compression, lineage.original_stem)
        return video_on_disk(self.name, path, method, compression, split, FAKE, family_id=family_id,
                             source_id=lineage.source_id, target_id=lineage.target_id,
                             mask_path=absolute(mask) if mask else None)
