"""Folder adapter: real/fake trees (flat or per split) and path,label[,split] CSV tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfprep.catalog import scan
from dfprep.config import DatasetConfig
from dfprep.errors import LayoutError


def touch(root: Path, *relative: str) -> None:
    """Create empty files (and their folders) below root."""
    for name in relative:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def summary(root: Path, options: DatasetConfig | None = None) -> list[tuple[str, str, str, int]]:
    """(video_id, method, split, label) of every record, in the adapter's order."""
    return [(r.video_id, r.method, r.split, r.label) for r in scan("folder", root, options)]


def test_flat_tree_with_method_folders(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "real/b.mp4",
        "real/a.MOV",
        "fake/faceswap/x/clip1.mp4",
        "fake/faceswap/clip0.mp4",
        "fake/direct.avi",
        "fake/notes.txt",
        "fake/.hidden.mp4",
        "fake/.cache/c.mp4",
    )
    assert summary(tmp_path) == [
        ("folder/real/raw/a", "real", "train", 0),
        ("folder/real/raw/b", "real", "train", 0),
        ("folder/fake/raw/direct", "fake", "train", 1),
        ("folder/faceswap/raw/faceswap__clip0", "faceswap", "train", 1),
        ("folder/faceswap/raw/faceswap__x__clip1", "faceswap", "train", 1),
    ]


def test_records_are_their_own_family_with_absolute_paths(tmp_path: Path) -> None:
    touch(tmp_path, "real/a.mp4", "fake/b.mp4")
    for record in scan("folder", tmp_path):
        assert record.family_id == record.video_id
        assert record.compression == "raw" and record.dataset == "folder"
        assert Path(record.path).is_absolute() and Path(record.path).is_file()
        assert (record.source_id, record.target_id, record.status) == (None, None, "found")


def test_split_folders_give_splits_and_distinct_ids(tmp_path: Path) -> None:
    touch(tmp_path, "train/real/0001.mp4", "train/fake/0001.mp4", "val/real/0001.mp4", "Test/Fake/m/0001.mp4")
    assert summary(tmp_path) == [
        ("folder/real/raw/train__0001", "real", "train", 0),
        ("folder/fake/raw/train__0001", "fake", "train", 1),
        ("folder/real/raw/val__0001", "real", "val", 0),
        ("folder/m/raw/test__m__0001", "m", "test", 1),
    ]


def test_default_split_option(tmp_path: Path) -> None:
    touch(tmp_path, "real/a.mp4")
    assert summary(tmp_path, DatasetConfig(default_split="test"))[0][2] == "test"


def test_fake_only_tree_is_accepted(tmp_path: Path) -> None:
    touch(tmp_path, "fake/a.mp4")
    assert [r[0] for r in summary(tmp_path)] == ["folder/fake/raw/a"]


def test_tree_without_label_folders_is_a_layout_error(tmp_path: Path) -> None:
    touch(tmp_path, "videos/a.mp4")
    with pytest.raises(LayoutError, match=r"real/ and/or fake/.*found videos/"):
        list(scan("folder", tmp_path))


def test_csv_file_as_root(tmp_path: Path) -> None:
    touch(tmp_path, "clips/a.mp4", "clips/b.mp4", "c.mp4")
    outside = tmp_path.parent / f"{tmp_path.name}-outside" / "d.mp4"
    touch(outside.parent, outside.name)
    table = tmp_path / "mine.csv"
    table.write_text(
        "path,label,split\n"
        "clips/a.mp4,REAL,val\n"
        "clips/b.mp4,1,\n"
        f"{outside},fake,test\n"
        "\n"
        "c.mp4,0,TRAIN\n"
    )
    records = list(scan("folder", table, DatasetConfig(default_split="unassigned")))
    assert [(r.video_id, r.split, r.label) for r in records] == [
        ("folder/real/raw/clips__a", "val", 0),
        ("folder/fake/raw/clips__b", "unassigned", 1),
        ("folder/fake/raw/" + "__".join(outside.with_suffix("").parts[1:]), "test", 1),
        ("folder/real/raw/c", "train", 0),
    ]
    assert records[2].path == str(outside)
    assert all(r.status == "found" for r in records)


def test_labels_csv_in_folder_wins_over_label_folders(tmp_path: Path) -> None:
    touch(tmp_path, "real/a.mp4", "fake/b.mp4")
    (tmp_path / "labels.csv").write_text("Path,Label\nreal/a.mp4,fake\n")
    assert summary(tmp_path) == [("folder/fake/raw/real__a", "fake", "train", 1)]


def test_csv_row_naming_absent_file_is_missing(tmp_path: Path) -> None:
    touch(tmp_path, "a.mp4")
    (tmp_path / "labels.csv").write_text("path,label\na.mp4,0\n../gone/b.mp4,1\n")
    present, absent = scan("folder", tmp_path)
    assert (present.status, present.error) == ("found", "")
    assert absent.status == "missing" and absent.label == 1
    assert "line 3" in absent.error and "../gone/b.mp4" in absent.error
    assert ".." not in absent.video_id and absent.path == str(tmp_path.parent / "gone" / "b.mp4")


def test_bad_label_names_the_csv_line(tmp_path: Path) -> None:
    touch(tmp_path, "a.mp4", "b.mp4")
    (tmp_path / "labels.csv").write_text("path,label\na.mp4,real\nb.mp4,maybe\n")
    with pytest.raises(LayoutError, match=r"labels.csv line 3: label 'maybe'"):
        list(scan("folder", tmp_path))


def test_bad_split_names_the_csv_line(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,label,split\na.mp4,real,holdout\n")
    with pytest.raises(LayoutError, match=r"line 2: split 'holdout'"):
        list(scan("folder", tmp_path))


def test_csv_without_path_label_header_is_a_layout_error(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("a.mp4,0\n")
    with pytest.raises(LayoutError, match="expected a header path,label"):
        list(scan("folder", table))


def test_duplicate_rows_are_refused(tmp_path: Path) -> None:
    touch(tmp_path, "a.mp4")
    (tmp_path / "labels.csv").write_text("path,label\na.mp4,0\n./a.mp4,0\n")
    with pytest.raises(LayoutError, match="both map to id folder/real/raw/a"):
        list(scan("folder", tmp_path))


def test_unreadable_csv_is_a_layout_error(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_bytes(b"path,label\n" + b"a.mp4,0\n" * 5000 + b"\xff\xfe,1\n")
    with pytest.raises(LayoutError, match="cannot read the label CSV"):
        list(scan("folder", table))


def test_every_common_ffmpeg_container_is_a_video_and_other_files_are_counted(tmp_path: Path) -> None:
    touch(tmp_path, "real/a.mpg", "real/b.ts", "real/c.h264", "real/d.M2TS", "real/e.mts", "real/f.flv",
          "real/g.wmv", "real/h.3gp", "real/i.hevc", "real/j.mpeg", "fake/k.264", "fake/notes.txt",
          "fake/l.JPG", "fake/m.txt", "fake/noext", "fake/.hidden.txt")
    with pytest.warns(UserWarning) as caught:
        records = summary(tmp_path)
    assert [r[0].rsplit("/", 1)[1] for r in records] == list("abcdefghijk")
    messages = [str(w.message) for w in caught]
    assert messages == ["folder: skipped 4 file(s) whose extension is not a video extension "
                        "(.txt 2, .jpg 1, (none) 1); `dfprep datasets folder` lists the video extensions"]


def test_no_warning_when_every_file_is_a_video(tmp_path: Path) -> None:
    import warnings

    touch(tmp_path, "real/a.mp4", "fake/b.ts")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(summary(tmp_path)) == 2
