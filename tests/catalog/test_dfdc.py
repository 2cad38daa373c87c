"""DFDC adapter: both Kaggle nestings, fold-safe families, missing files, held-out label sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfprep.catalog import scan
from dfprep.catalog.base import FAKE, REAL, VideoRecord
from dfprep.catalog.dfdc import DFDCAdapter
from dfprep.config import DatasetConfig, DFDCOptions
from dfprep.errors import LayoutError


def real(original: None = None) -> dict[str, object]:
    """A metadata entry for an original."""
    return {"label": "REAL", "split": "train", "original": original}


def fake(original: str) -> dict[str, object]:
    """A metadata entry for a fake of `original`."""
    return {"label": "FAKE", "split": "train", "original": original}


def write_part(folder: Path, metadata: dict[str, object], absent: tuple[str, ...] = ()) -> None:
    """A train part folder: metadata.json plus an empty file per entry not in `absent`."""
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps(metadata))
    for name in metadata:
        if name not in absent:
            (folder / name).touch()


def build_root(root: Path) -> Path:
    """Part 0 flat, part 1 nested Kaggle-style; part 1 lists a fake of an original living in part 0."""
    write_part(root / "dfdc_train_part_0", {"aaa.mp4": real(), "aab.mp4": fake("aaa.mp4"), "aac.mp4": fake("aaa.mp4")})
    write_part(
        root / "dfdc_train_part_01" / "dfdc_train_part_1",
        {"bba.mp4": real(), "bbb.mp4": fake("bba.mp4"), "stray.mp4": fake("aaa.mp4"), "gone.mp4": fake("bba.mp4")},
        absent=("gone.mp4",),
    )
    return root


def catalog(root: Path, **options: object) -> dict[str, VideoRecord]:
    """Scan the root and index the rows by video id."""
    return {r.video_id: r for r in scan("dfdc", root, DatasetConfig(**options))}


def test_both_nestings_are_read_with_their_part_number_as_fold(tmp_path: Path) -> None:
    rows = catalog(build_root(tmp_path))
    assert len(rows) == 7
    assert rows["dfdc/original/raw/aaa"].fold == "0"
    assert rows["dfdc/original/raw/bba"].fold == "1"
    assert rows["dfdc/original/raw/bba"].path == str(tmp_path / "dfdc_train_part_01" / "dfdc_train_part_1" / "bba.mp4")
    assert {r.split for r in rows.values()} == {"train"}


def test_methods_labels_and_families(tmp_path: Path) -> None:
    rows = catalog(build_root(tmp_path))
    original, forged = rows["dfdc/original/raw/bba"], rows["dfdc/DFDC/raw/bbb"]
    assert (original.method, original.label, original.family_id) == ("original", REAL, original.video_id)
    assert (forged.method, forged.label, forged.family_id) == ("DFDC", FAKE, "dfdc/original/raw/bba")
    assert (forged.compression, forged.dataset) == ("raw", "dfdc")


def test_families_never_cross_folds(tmp_path: Path) -> None:
    rows = catalog(build_root(tmp_path), dfdc_val_parts=(0,))
    for row in rows.values():
        assert row.fold == rows[row.family_id].fold
        assert row.split == rows[row.family_id].split
    stray = rows["dfdc/DFDC/raw/stray"]
    assert (stray.fold, stray.split, stray.family_id) == ("0", "val", "dfdc/original/raw/aaa")
    assert stray.path.endswith("dfdc_train_part_1/stray.mp4")


def test_val_parts_become_val(tmp_path: Path) -> None:
    rows = catalog(build_root(tmp_path), dfdc_val_parts=(1,))
    assert {r.video_id for r in rows.values() if r.split == "val"} == {
        "dfdc/original/raw/bba", "dfdc/DFDC/raw/bbb", "dfdc/DFDC/raw/gone"}


def test_metadata_naming_an_absent_file_is_a_missing_record(tmp_path: Path) -> None:
    rows = catalog(build_root(tmp_path))
    gone = rows["dfdc/DFDC/raw/gone"]
    assert (gone.status, gone.family_id) == ("missing", "dfdc/original/raw/bba")
    assert "metadata.json" in gone.error and "\n" not in gone.error
    assert {r.video_id for r in rows.values() if r.status == "missing"} == {gone.video_id}


def test_broken_metadata_skips_its_part_with_a_warning(tmp_path: Path) -> None:
    root = build_root(tmp_path)
    (root / "dfdc_train_part_0" / "metadata.json").write_text("{not json")
    with pytest.warns(UserWarning, match="part 0 skipped"):
        rows = catalog(root)
    assert {r.fold for r in rows.values()} == {"1"}


def write_held_out(folder: Path, rows: str, videos: tuple[str, ...]) -> None:
    """A labelled held-out set: labels.csv plus the listed empty videos."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder.parent / "labels.csv" if folder.name == "videos" else folder / "labels.csv").write_text(rows)
    for name in videos:
        (folder / name).touch()


def test_test_labels_use_one_for_fake(tmp_path: Path) -> None:
    root = build_root(tmp_path)
    write_held_out(root / "test", "filename,label\ntta.mp4,1\nttb.mp4,0\nttc.mp4,1\n", ("tta.mp4", "ttb.mp4"))
    rows = catalog(root)
    tta, ttb, ttc = rows["dfdc/DFDC/raw/tta"], rows["dfdc/original/raw/ttb"], rows["dfdc/DFDC/raw/ttc"]
    assert (tta.label, tta.split, tta.family_id, tta.fold) == (FAKE, "test", tta.video_id, None)
    assert (ttb.label, ttb.method, ttb.status) == (REAL, "original", "found")
    assert (ttc.status, ttc.split) == ("missing", "test")


def test_validation_set_in_a_videos_subfolder(tmp_path: Path) -> None:
    root = build_root(tmp_path)
    write_held_out(root / "validation" / "videos", "filename,label\nvva.mp4,0\n", ("vva.mp4",))
    row = catalog(root)["dfdc/original/raw/vva"]
    assert (row.split, row.status, row.label) == ("val", "found", REAL)
    assert row.path == str(root / "validation" / "videos" / "vva.mp4")


def test_bad_label_in_labels_csv_names_the_line(tmp_path: Path) -> None:
    root = build_root(tmp_path)
    write_held_out(root / "test", "filename,label\ntta.mp4,1\nttb.mp4,maybe\n", ())
    with pytest.raises(LayoutError, match=r"labels.csv:3"):
        catalog(root)


def test_order_is_sorted_and_stable(tmp_path: Path) -> None:
    root = build_root(tmp_path)
    first = [r.video_id for r in scan("dfdc", root)]
    assert first == sorted(first) == [r.video_id for r in scan("dfdc", root)]


def test_root_without_parts_or_test_set_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "dfdc_train_part_3").mkdir()
    with pytest.raises(LayoutError, match="metadata.json"):
        DFDCAdapter().check_layout(tmp_path, DFDCOptions())
