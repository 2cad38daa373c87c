"""DFDC full release: train parts with metadata.json, labelled test (and validation) sets, fold-safe families."""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from dfprep.catalog.base import FAKE, REAL, DatasetAdapter, VideoRecord, absolute, make_video_id
from dfprep.config import DFDCOptions
from dfprep.errors import LayoutError, one_line

DATASET = "dfdc"
COMPRESSION = "raw"
ORIGINAL, FAKE_METHOD = "original", "DFDC"
METADATA = "metadata.json"
LABELS_CSV = "labels.csv"
HELD_OUT_SETS = (("test", ("test",)), ("val", ("validation", "val")))  # split → folders tried in order
_PART_FOLDER = re.compile(r"^dfdc_train_part_(\d+)$")


@dataclass(frozen=True)
class TrainPart:
    """One extracted train part: the folder that holds metadata.json, and the part's number."""

    folder: Path
    number: int


@dataclass(frozen=True)
class TrainEntry:
    """One metadata.json row, tied to the part whose folder holds (or should hold) the file."""

    part: TrainPart
    filename: str
    label: int
    original: str | None


def find_parts(root: Path) -> list[TrainPart]:
    """Train parts at either nesting Kaggle's zips produce (part_00/ or part_00/part_0/), by number."""
    parts: dict[int, TrainPart] = {}
    for outer in sorted(p for p in root.iterdir() if p.is_dir() and _PART_FOLDER.match(p.name)):
        inner = sorted(p for p in outer.iterdir() if p.is_dir() and _PART_FOLDER.match(p.name))
        holder = next((f for f in [outer, *inner] if (f / METADATA).is_file()), None)
        if holder is None:
            continue
        number = int(_PART_FOLDER.match(holder.name).group(1))  # type: ignore[union-attr]
        if number in parts:
            warnings.warn(f"{holder}: part {number} already read from {parts[number].folder}; skipped", stacklevel=2)
            continue
        parts[number] = TrainPart(holder, number)
    return [parts[n] for n in sorted(parts)]


def read_metadata(part: TrainPart) -> dict[str, Any]:
    """A part's metadata.json; {} with a one-line warning when it is not a JSON object."""
    path = part.folder / METADATA
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.warn(f"{path}: not readable JSON, part {part.number} skipped ({one_line(exc)})", stacklevel=2)
        return {}
    if not isinstance(data, dict):
        warnings.warn(f"{path}: expected a JSON object, part {part.number} skipped", stacklevel=2)
        return {}
    return data


def part_entries(part: TrainPart) -> list[TrainEntry]:
    """The part's videos with a REAL/FAKE label; malformed rows are counted in one warning."""
    entries, malformed = [], 0
    for filename, info in sorted(read_metadata(part).items()):
        label = {"REAL": REAL, "FAKE": FAKE}.get(str(info.get("label", "")).upper()) if isinstance(info, dict) else None
        if label is None:
            malformed += 1
            continue
        original = info.get("original") if label == FAKE else None
        entries.append(TrainEntry(part, filename, label, original if isinstance(original, str) else None))
    if malformed:
        warnings.warn(f"{part.folder / METADATA}: {malformed} entries without a REAL/FAKE label skipped", stacklevel=2)
    return entries


def fold_of_family(entries: list[TrainEntry]) -> dict[str, TrainPart]:
    """Part of each original, so a fake listed in another part can join its original's fold."""
    home: dict[str, TrainPart] = {}
    for entry in entries:
        if entry.label == REAL:
            home.setdefault(entry.filename, entry.part)
    return home


def read_labels_csv(path: Path) -> list[tuple[str, int]]:
    """(filename, label) rows of a held-out set's labels.csv, where 1 = fake as in the challenge."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not {"filename", "label"} <= set(reader.fieldnames or ()):
            raise LayoutError(f"{path}: expected columns filename,label; found {','.join(reader.fieldnames or ())}")
        rows = []
        for number, row in enumerate(reader, start=2):
            text = (row["label"] or "").strip()
            label = {"0": REAL, "1": FAKE, "0.0": REAL, "1.0": FAKE, "REAL": REAL, "FAKE": FAKE}.get(text.upper())
            if label is None or not (row["filename"] or "").strip():
                raise LayoutError(f"{path}:{number}: expected '<file>,<0 real | 1 fake>', got {text!r}")
            rows.append((row["filename"].strip(), label))
    return sorted(rows)


def held_out_sets(root: Path) -> list[tuple[str, Path]]:
    """(split, folder) for each labelled test/validation set present under root."""
    found = []
    for split, names in HELD_OUT_SETS:
        folder = next((root / n for n in names if (root / n / LABELS_CSV).is_file()), None)
        if folder is not None:
            found.append((split, folder))
    return found


def method_of(label: int) -> str:
    """Originals under 'original', fakes under 'DFDC': the release does not say which method made a fake."""
    return FAKE_METHOD if label == FAKE else ORIGINAL


def video_id_of(label: int, filename: str) -> str:
    """The id of a DFDC video from its label and file name (names are unique across the release)."""
    return make_video_id(DATASET, method_of(label), COMPRESSION, PurePosixPath(filename).stem)


class DFDCAdapter(DatasetAdapter):
    """The DFDC full release as extracted from its zips (AWS or Kaggle)."""

    name = "dfdc"
    summary = "DFDC full release: ~119k train videos in 50 parts, labelled test and validation sets"
    layout = (
        "<root>/\n"
        "  dfdc_train_part_<N>/metadata.json + *.mp4          (or dfdc_train_part_<NN>/dfdc_train_part_<N>/...)\n"
        "  test/labels.csv + *.mp4 (or test/videos/*.mp4)     columns filename,label (1 = fake)\n"
        "  validation/labels.csv (or val/), optional          same form, split val"
    )
    labels = (
        "0 REAL / 1 FAKE; fold = train part number, split train (val for dataset.dfdc_val_parts); a fake listed in "
        "another part than its original takes the original's fold and split, so no family crosses folds.\n"
        "Absent files are 'missing' records; an unreadable metadata.json skips its part with a warning; "
        "test/validation fakes have no known original, so each is its own family."
    )

    def check_layout(self, root: Path, options: DFDCOptions) -> None:
        """Require at least one train part with metadata.json or one labelled held-out set."""
        if not root.is_dir() or not (find_parts(root) or held_out_sets(root)):
            expected = "dfdc_train_part_<N>/metadata.json (possibly one level deeper) or test/labels.csv"
            raise self.layout_error(root, expected)

    def records(self, root: Path, options: DFDCOptions) -> Iterator[VideoRecord]:
        """Train parts and held-out sets, sorted by video id."""
        rows = list(self._train_records(root, options))
        for split, folder in held_out_sets(root):
            rows.extend(self._held_out_records(split, folder))
        yield from sorted(rows, key=lambda row: row.video_id)

    def _train_records(self, root: Path, options: DFDCOptions) -> Iterator[VideoRecord]:
        """Train-part rows, each fake moved to its original's fold when metadata split the family."""
        entries = [entry for part in find_parts(root) for entry in part_entries(part)]
        home = fold_of_family(entries)
        listings = {part.folder: set(os.listdir(part.folder)) for part in {e.part for e in entries}}
        for entry in entries:
            fold = home.get(entry.original, entry.part) if entry.original else entry.part
            split = "val" if fold.number in options.dfdc_val_parts else "train"
            present = entry.filename in listings[entry.part.folder]
            error = "" if present else f"named in {entry.part.folder.name}/{METADATA} but absent"
            yield self._record(entry.part.folder / entry.filename, entry.label, split, entry.original, error,
                               str(fold.number))

    def _held_out_records(self, split: str, folder: Path) -> Iterator[VideoRecord]:
        """Rows of one labelled held-out set; videos sit beside labels.csv or in videos/."""
        videos = folder / "videos" if (folder / "videos").is_dir() else folder
        for filename, label in read_labels_csv(folder / LABELS_CSV):
            path = videos / filename
            error = "" if path.is_file() else f"named in {folder.name}/{LABELS_CSV} but absent"
            yield self._record(path, label, split, None, error, None)

    def _record(self, path: Path, label: int, split: str, original: str | None, error: str,
                fold: str | None) -> VideoRecord:
        """Assemble one row; the family is the original's id (a video's own id when none is named)."""
        video_id = video_id_of(label, path.name)
        return VideoRecord(
            video_id=video_id, path=absolute(path), dataset=DATASET, method=method_of(label),
            compression=COMPRESSION, split=split, label=label,
            family_id=video_id_of(REAL, original) if original else video_id, fold=fold,
            status="missing" if error else "found", error=error,
        )
