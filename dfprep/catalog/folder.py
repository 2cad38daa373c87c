"""Any home-made dataset: real/ and fake/ folders (optionally per split), or a path,label[,split] CSV."""

from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from dfprep.catalog.base import (
    FAKE,
    REAL,
    SPLITS,
    VIDEO_EXTENSIONS,
    DatasetAdapter,
    VideoRecord,
    video_on_disk,
)
from dfprep.config import FolderOptions
from dfprep.errors import LayoutError

CSV_NAME = "labels.csv"
COMPRESSION = "raw"  # a home-made dataset says nothing about compression
LABEL_FOLDERS = {"real": REAL, "fake": FAKE}
LABEL_WORDS = {"0": REAL, "1": FAKE, "real": REAL, "fake": FAKE}
CSV_SPLITS = (*SPLITS, "unassigned")
EXPECTED = "real/ and/or fake/ folders (optionally under train/, val/, test/), or a path,label[,split] CSV"


def label_csv(root: Path) -> Path | None:
    """The label table: root itself when it is a .csv file, else <root>/labels.csv when present."""
    if root.is_file():
        return root if root.suffix.lower() == ".csv" else None
    candidate = root / CSV_NAME
    return candidate if candidate.is_file() else None


def subfolders(folder: Path) -> dict[str, Path]:
    """Sub-folders by lower-case name, so Real/ and REAL/ count as real/."""
    if not folder.is_dir():
        return {}
    return {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir()}


def label_folders(root: Path) -> list[tuple[str | None, Path]]:
    """(split folder or None, real/fake folder): the root's own first, then train, val, test."""
    found: list[tuple[str | None, Path]] = []
    for split in (None, *SPLITS):
        parent = subfolders(root).get(split) if split else root
        children = subfolders(parent) if parent else {}
        found.extend((split, children[name]) for name in LABEL_FOLDERS if name in children)
    return found


def videos_below(folder: Path, skipped: Counter[str] | None = None) -> list[str]:
    """Video files anywhere below `folder` as relative path strings, hidden files and folders skipped, sorted by
    their parts.

    Strings, not Path objects: a folder of 100k videos costs 100k short strings while it is catalogued, and
    pathlib would intern every file name for the life of the process. Other files are counted in `skipped` by
    extension, so the catalog can say what it left out.
    """
    found: list[str] = []
    for directory, folders, files in os.walk(folder):  # symlinked folders are listed, not entered (as rglob)
        folders[:] = [name for name in folders if not name.startswith(".")]
        below = os.path.relpath(directory, folder)
        for name in files:
            if name.startswith(".") or not os.path.isfile(os.path.join(directory, name)):
                continue
            extension = name[suffix_start(name):].lower()
            if extension in VIDEO_EXTENSIONS:
                found.append(name if below == os.curdir else os.path.join(below, name))
            elif skipped is not None:
                skipped[extension or "(none)"] += 1
    found.sort(key=lambda relative: relative.split(os.sep))
    return found


def skipped_warning(skipped: Counter[str]) -> str:
    """One line for the summary: how many files were not taken as videos, by extension."""
    kinds = ", ".join(f"{extension} {count}" for extension, count in skipped.most_common(6))
    more = ", …" if len(skipped) > 6 else ""
    return (f"folder: skipped {sum(skipped.values())} file(s) whose extension is not a video extension ({kinds}{more}); "
            "`dfprep datasets folder` lists the video extensions")


def suffix_start(name: str) -> int:
    """Where a file name's extension begins (its length when it has none): pathlib's rule for a suffix, on a
    plain string (pathlib interns every name it parses, for the life of the process)."""
    dot = name.rfind(".")
    return dot if 0 < dot < len(name) - 1 else len(name)


def stem_of(parts: Sequence[str]) -> str:
    """A relative video path's parts as an id stem: extension dropped, folders joined by `__`."""
    *folders, name = parts  # no parts (the CSV's own folder) is a ValueError, like Path.with_suffix's
    return "__".join([*folders, name[:suffix_start(name)]])


def stem_outside(path: Path, base: Path) -> str:
    """Stem of a CSV path: relative to the CSV's folder, else the absolute path without its anchor."""
    normal = Path(os.path.normpath(path))
    try:
        return stem_of(normal.relative_to(os.path.normpath(base)).parts)
    except ValueError:
        return stem_of(normal.relative_to(normal.anchor).parts)


def unique(records: Iterable[VideoRecord]) -> Iterator[VideoRecord]:
    """Pass records through, refusing two videos that would share one video_id."""
    seen: dict[str, str] = {}
    for record in records:
        if record.video_id in seen:
            raise LayoutError(f"{record.path} and {seen[record.video_id]} both map to id {record.video_id}")
        seen[record.video_id] = record.path
        yield record


def read_table(table: Path) -> list[tuple[int, list[str]]]:
    """Every CSV row with its line number (header first), so errors can point at a line."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            return [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LayoutError(f"{table}: cannot read the label CSV ({exc})") from None


def table_columns(table: Path, rows: list[tuple[int, list[str]]]) -> list[str]:
    """The CSV's column names (lower-case); the header must name at least path and label."""
    header = rows[0][1] if rows else []
    columns = [name.strip().lower() for name in header]
    if "path" not in columns or "label" not in columns:
        raise LayoutError(f"{table}: expected a header path,label[,split]; found {','.join(header) or 'nothing'}")
    return columns


def parse_label(value: str, where: str) -> int:
    """0/1/real/fake in any case; anything else is a layout error naming the CSV line."""
    label = LABEL_WORDS.get(value.strip().lower())
    if label is None:
        raise LayoutError(f"{where}: label {value!r} is not one of 0, 1, real, fake")
    return label


def parse_split(value: str, default: str, where: str) -> str:
    """An empty split cell takes dataset.default_split; an unknown one is a layout error."""
    split = value.strip().lower() or default
    if split not in CSV_SPLITS:
        raise LayoutError(f"{where}: split {value!r} is not one of {', '.join(CSV_SPLITS)}")
    return split


class FolderAdapter(DatasetAdapter):
    """Home-made datasets: label folders or a label table, no pairing between reals and fakes."""

    name = "folder"
    summary = "any tree of real/ and fake/ folders (optionally per split), or a path,label[,split] CSV"
    layout = """\
<root>/{real,fake}/[<method>/]**/*.mp4           method = first sub-folder (or real/fake itself)
<root>/{train,val,test}/{real,fake}/[<method>/]**/*.mp4   split from the folder; ids start with it
or: <root>/labels.csv (or root = any .csv)       header path,label[,split]; paths relative to the CSV, or absolute
videos: files with a video extension (other files are skipped and counted in a catalog warning):
  """ + " ".join(e.lstrip(".") for e in VIDEO_EXTENSIONS)
    labels = (
        "real/ and 0/real rows 0, fake/ and 1/fake rows 1; split from the split folder or CSV column, "
        "else dataset.default_split; every video is its own family (no pairing); a CSV, when present, wins"
    )

    def check_layout(self, root: Path, options: FolderOptions) -> None:
        """Need a readable label CSV or at least one real/ or fake/ folder."""
        table = label_csv(root)
        if table is not None:
            table_columns(table, read_table(table))
        elif not label_folders(root):
            raise self.layout_error(root, EXPECTED)

    def records(self, root: Path, options: FolderOptions) -> Iterator[VideoRecord]:
        """Rows of the label CSV in file order, else the label folders' videos in sorted order."""
        table = label_csv(root)
        rows = self.table_records(table, options) if table else self.folder_records(root, options)
        yield from unique(rows)

    def folder_records(self, root: Path, options: FolderOptions) -> Iterator[VideoRecord]:
        """Label from the real/fake folder, split from its parent split folder."""
        skipped: Counter[str] = Counter()
        for split, label_folder in label_folders(root):
            kind = label_folder.name.lower()
            for relative in videos_below(label_folder, skipped):
                parts = relative.split(os.sep)
                method = parts[0] if len(parts) > 1 else kind
                stem = f"{split}__{stem_of(parts)}" if split else stem_of(parts)
                yield self.record(os.path.join(label_folder, relative), method, stem, split or options.default_split,
                                  LABEL_FOLDERS[kind])
        if skipped:
            warnings.warn(skipped_warning(skipped), stacklevel=2)

    def table_records(self, table: Path, options: FolderOptions) -> Iterator[VideoRecord]:
        """One record per CSV row; a row naming an absent file is a 'missing' record."""
        rows = read_table(table)
        columns = table_columns(table, rows)
        for line, row in rows[1:]:
            cells = dict(zip(columns, (cell.strip() for cell in row)))
            if not any(cells.values()):
                continue
            where = f"{table} line {line}"
            if not cells.get("path"):
                raise LayoutError(f"{where}: empty path")
            label = parse_label(cells.get("label", ""), where)
            split = parse_split(cells.get("split", ""), options.default_split, where)
            path = table.parent / cells["path"]  # an absolute path replaces the CSV's folder
            record = self.record(path, "fake" if label else "real", stem_outside(path, table.parent), split, label)
            if not path.is_file():
                record = self.missing(record, f"{where} names {cells['path']}, which does not exist")
            yield record

    def record(self, path: Path | str, method: str, stem: str, split: str, label: int) -> VideoRecord:
        """A found video that is its own family (the folder layout carries no pairing)."""
        return video_on_disk(self.name, path, method, COMPRESSION, split, label, stem=stem)

    @staticmethod
    def missing(record: VideoRecord, error: str) -> VideoRecord:
        """The same record, marked as naming a file that is absent."""
        return replace(record, status="missing", error=error)
