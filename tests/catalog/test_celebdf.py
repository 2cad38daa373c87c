"""Celeb-DF adapter: test-list label inversion, no test leakage, identity-disjoint train/val, families."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfprep.catalog import scan
from dfprep.catalog.base import FAKE, REAL, VideoRecord
from dfprep.catalog.celebdf import CelebDFAdapter, identity_in_val
from dfprep.config import CelebDFOptions, DatasetConfig
from dfprep.errors import LayoutError

CELEB_REAL = [f"id{a}_{n:04d}.mp4" for a in range(12) for n in range(3)]
SYNTHESIS = [f"id{a}_id{(a + 1) % 12}_{n:04d}.mp4" for a in range(12) for n in range(3)]
YOUTUBE = [f"{n:05d}.mp4" for n in range(6)]
TEST_LIST = [  # the official convention: 1 = real, 0 = fake
    "1 YouTube-real/00000.mp4",
    "1 Celeb-real/id0_0000.mp4",
    "0 Celeb-synthesis/id0_id1_0000.mp4",
    "0 Celeb-synthesis/id5_id6_0001.mp4",
]


def build_root(root: Path, test_list: list[str] = TEST_LIST) -> Path:
    """A Celeb-DF tree of empty files with a test list."""
    for folder, names in (("Celeb-real", CELEB_REAL), ("Celeb-synthesis", SYNTHESIS), ("YouTube-real", YOUTUBE)):
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).touch()
    (root / "List_of_testing_videos.txt").write_text("\n".join(test_list) + "\n")
    return root


def catalog(root: Path, **options: object) -> dict[str, VideoRecord]:
    """Scan the root and index the rows by video id."""
    return {r.video_id: r for r in scan("celebdf", root, DatasetConfig(**options))}


def test_every_video_once_with_folder_method(tmp_path: Path) -> None:
    rows = catalog(build_root(tmp_path))
    assert len(rows) == len(CELEB_REAL) + len(SYNTHESIS) + len(YOUTUBE)
    row = rows["celebdf/Celeb-synthesis/raw/id3_id4_0002"]
    assert (row.method, row.compression, row.status) == ("Celeb-synthesis", "raw", "found")
    assert row.path == str(tmp_path / "Celeb-synthesis" / "id3_id4_0002.mp4")


def test_test_list_labels_are_inverted_to_zero_real(tmp_path: Path) -> None:
    rows = catalog(build_root(tmp_path))
    assert rows["celebdf/Celeb-real/raw/id0_0000"].label == REAL
    assert rows["celebdf/YouTube-real/raw/00000"].label == REAL
    assert rows["celebdf/Celeb-synthesis/raw/id0_id1_0000"].label == FAKE
    assert {r.label for r in rows.values() if r.method == "Celeb-synthesis"} == {FAKE}


def test_an_already_inverted_list_is_refused(tmp_path: Path) -> None:
    root = build_root(tmp_path, ["0 Celeb-real/id0_0000.mp4"])
    with pytest.raises(LayoutError, match="id0_0000"):
        catalog(root)


def test_listed_videos_are_test_and_never_train_or_val(tmp_path: Path) -> None:
    rows = catalog(build_root(tmp_path), val_fraction=0.5)
    test_ids = {r.video_id for r in rows.values() if r.split == "test"}
    assert test_ids == {
        "celebdf/YouTube-real/raw/00000",
        "celebdf/Celeb-real/raw/id0_0000",
        "celebdf/Celeb-synthesis/raw/id0_id1_0000",
        "celebdf/Celeb-synthesis/raw/id5_id6_0001",
    }
    assert {r.split for r in rows.values()} == {"train", "val", "test"}


def test_no_target_identity_in_both_train_and_val(tmp_path: Path) -> None:
    rows = catalog(build_root(tmp_path), val_fraction=0.4, seed=3)
    train = {r.target_id for r in rows.values() if r.split == "train"}
    val = {r.target_id for r in rows.values() if r.split == "val"}
    assert train and val and not train & val
    assert all(identity_in_val(t, 3, 0.4) for t in val)


def test_split_is_deterministic_and_follows_the_seed(tmp_path: Path) -> None:
    root = build_root(tmp_path)

    def splits(seed: int) -> list[tuple[str, str]]:
        """(video id, split) pairs of one scan under `seed`."""
        return [(r.video_id, r.split) for r in scan("celebdf", root, DatasetConfig(seed=seed, val_fraction=0.5))]

    first = splits(0)
    assert splits(0) == first
    assert [video_id for video_id, _ in first] == sorted(video_id for video_id, _ in first)
    assert splits(1) != first


def test_zero_val_fraction_puts_every_unlisted_video_in_train(tmp_path: Path) -> None:
    rows = catalog(build_root(tmp_path), val_fraction=0.0)
    assert {r.split for r in rows.values()} == {"train", "test"}


def test_fakes_belong_to_their_celeb_real_clip(tmp_path: Path) -> None:
    rows = catalog(build_root(tmp_path))
    fake = rows["celebdf/Celeb-synthesis/raw/id5_id6_0001"]
    assert (fake.target_id, fake.source_id) == ("id5", "id6")
    assert fake.family_id == "celebdf/Celeb-real/raw/id5_0001"
    assert fake.family_id in rows
    original = rows["celebdf/Celeb-real/raw/id5_0001"]
    assert (original.family_id, original.target_id, original.source_id) == (original.video_id, "id5", None)
    youtube = rows["celebdf/YouTube-real/raw/00003"]
    assert (youtube.target_id, youtube.family_id) == ("yt00003", youtube.video_id)


def test_fake_of_an_absent_original_still_names_it_as_family(tmp_path: Path) -> None:
    root = build_root(tmp_path)
    (root / "Celeb-real" / "id7_0002.mp4").unlink()
    rows = catalog(root)
    assert rows["celebdf/Celeb-synthesis/raw/id7_id8_0002"].family_id == "celebdf/Celeb-real/raw/id7_0002"
    assert "celebdf/Celeb-real/raw/id7_0002" not in rows


def test_listed_but_absent_file_is_a_missing_record(tmp_path: Path) -> None:
    root = build_root(tmp_path, TEST_LIST + ["0 Celeb-synthesis/id9_id2_0099.mp4"])
    row = catalog(root)["celebdf/Celeb-synthesis/raw/id9_id2_0099"]
    assert (row.status, row.split, row.label) == ("missing", "test", FAKE)
    assert "List_of_testing_videos.txt" in row.error and "\n" not in row.error


def test_malformed_test_list_line_names_file_and_line(tmp_path: Path) -> None:
    root = build_root(tmp_path, ["1 Celeb-real/id0_0000.mp4", "real id1_0000.mp4"])
    with pytest.raises(LayoutError, match=r"List_of_testing_videos.txt:2"):
        catalog(root)


def test_root_without_test_list_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "Celeb-real").mkdir()
    with pytest.raises(LayoutError, match="List_of_testing_videos.txt"):
        CelebDFAdapter().check_layout(tmp_path, CelebDFOptions())
