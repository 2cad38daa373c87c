"""Celeb-DF (v1/v2): official test list with its inverted labels, identity-disjoint train/val."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from typing import Iterator

from dfprep.catalog.base import FAKE, REAL, DatasetAdapter, VideoRecord, absolute, list_videos, make_video_id
from dfprep.config import CelebDFOptions
from dfprep.errors import LayoutError

DATASET = "celebdf"
COMPRESSION = "raw"
TEST_LIST = "List_of_testing_videos.txt"
CELEB_REAL, YOUTUBE_REAL, SYNTHESIS = "Celeb-real", "YouTube-real", "Celeb-synthesis"
FOLDERS = (CELEB_REAL, SYNTHESIS, YOUTUBE_REAL)

_CELEB_STEM = re.compile(r"^(id\d+)_(\d+)$")  # id<A>_<NNNN>
_SYNTHESIS_STEM = re.compile(r"^(id\d+)_(id\d+)_(\d+)$")  # id<A>_id<B>_<NNNN>: B's face on A's clip
_TEST_LINE = re.compile(r"^([01])\s+(\S+/\S+)$")


def identity_in_val(identity: str, seed: int, val_fraction: float) -> bool:
    """Hash seed+identity into [0, 1) so a person always lands on the same side, run after run."""
    digest = hashlib.sha256(f"{seed}:{identity}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def read_test_list(path: Path) -> dict[str, int]:
    """Map '<folder>/<file>' to a 0-real/1-fake label; the list itself writes 1 for real, 0 for fake."""
    listed: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        match = _TEST_LINE.match(line.strip())
        if match is None:
            raise LayoutError(f"{path}:{number}: expected '<1 real | 0 fake> <folder>/<file>', got {line.strip()!r}")
        relative = PurePosixPath(match.group(2).replace("\\", "/")).as_posix()
        listed[relative] = REAL if match.group(1) == "1" else FAKE
    return listed


def folder_label(folder: str) -> int | None:
    """The label a Celeb-DF folder implies (None for a folder Celeb-DF does not define)."""
    if folder == SYNTHESIS:
        return FAKE
    return REAL if folder in (CELEB_REAL, YOUTUBE_REAL) else None


def identities(folder: str, stem: str) -> tuple[str | None, str | None, str]:
    """Target id, source id and family id, read from a file name (families point at Celeb-real clips)."""
    own = make_video_id(DATASET, folder, COMPRESSION, stem)
    if folder == SYNTHESIS and (fake := _SYNTHESIS_STEM.match(stem)):
        target, source, clip = fake.groups()
        return target, source, make_video_id(DATASET, CELEB_REAL, COMPRESSION, f"{target}_{clip}")
    if folder == CELEB_REAL and (real := _CELEB_STEM.match(stem)):
        return real.group(1), None, own
    if folder == YOUTUBE_REAL:
        return f"yt{stem}", None, own  # each YouTube clip is one unnamed person
    return None, None, own


def listed_label(relative: str, listed: int, path: Path) -> int:
    """The normalised test-list label, refusing a list whose convention contradicts its folder."""
    expected = folder_label(relative.split("/", 1)[0])
    if expected is not None and expected != listed:
        raise LayoutError(
            f"{path}: '{relative}' is listed as {'fake' if listed == FAKE else 'real'} after normalising "
            f"(the list uses 1 = real, 0 = fake); was the list already inverted?"
        )
    return listed


class CelebDFAdapter(DatasetAdapter):
    """Celeb-DF v1/v2 in the layout its authors ship."""

    name = "celebdf"
    summary = "Celeb-DF v1/v2: celebrity deepfakes, official test list, identity-disjoint train/val"
    layout = (
        "<root>/\n"
        "  Celeb-real/id<A>_<NNNN>.mp4              real celebrity clips\n"
        "  YouTube-real/<NNNNN>.mp4                 real YouTube clips\n"
        "  Celeb-synthesis/id<A>_id<B>_<NNNN>.mp4   B's face on A's clip id<A>_<NNNN>\n"
        "  List_of_testing_videos.txt               '<1 real | 0 fake> <folder>/<file>.mp4' per line"
    )
    labels = (
        "0 real (Celeb-real, YouTube-real) / 1 fake (Celeb-synthesis); the test list's 1=real/0=fake is inverted.\n"
        "Listed videos are test (a listed but absent file is a 'missing' record); the rest split train/val "
        "by target identity (dataset.val_fraction, dataset.seed)."
    )

    def check_layout(self, root: Path, options: CelebDFOptions) -> None:
        """Require the test list and at least one of the three video folders."""
        expected = f"{', '.join(f + '/' for f in FOLDERS)} and {TEST_LIST}"
        if not (root / TEST_LIST).is_file() or not any((root / f).is_dir() for f in FOLDERS):
            raise self.layout_error(root, expected)

    def records(self, root: Path, options: CelebDFOptions) -> Iterator[VideoRecord]:
        """Every video on disk plus every test-list entry, sorted by video id."""
        listed = read_test_list(root / TEST_LIST)
        on_disk = {f"{folder}/{p.name}" for folder in FOLDERS for p in list_videos(root / folder)}
        rows = [self._record(root, relative, listed, options) for relative in on_disk | set(listed)]
        yield from sorted(rows, key=lambda row: row.video_id)

    def _record(self, root: Path, relative: str, listed: dict[str, int], options: CelebDFOptions) -> VideoRecord:
        """One video's row: test if listed, otherwise train/val by its target identity."""
        folder = relative.split("/", 1)[0]
        stem = PurePosixPath(relative).stem
        target, source, family = identities(folder, stem)
        video_id = make_video_id(DATASET, folder, COMPRESSION, stem)
        if relative in listed:
            label, split = listed_label(relative, listed[relative], root / TEST_LIST), "test"
        else:
            in_val = identity_in_val(target or video_id, options.seed, options.val_fraction)
            label, split = FAKE if folder == SYNTHESIS else REAL, "val" if in_val else "train"
        path = root / relative
        present = path.is_file()
        return VideoRecord(
            video_id=video_id, path=absolute(path), dataset=DATASET, method=folder, compression=COMPRESSION,
            split=split, label=label, family_id=family, source_id=source, target_id=target,
            status="found" if present else "missing",
            error="" if present else f"named in {TEST_LIST} but absent",
        )
