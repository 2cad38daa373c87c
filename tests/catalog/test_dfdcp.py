"""DFDC preview adapter: index-driven labels and sets, path-derived methods, persons as families."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfprep.catalog import scan
from dfprep.catalog.base import FAKE, REAL, VideoRecord
from dfprep.catalog.dfdcp import DFDCPreviewAdapter
from dfprep.config import DatasetConfig, DFDCPOptions
from dfprep.errors import LayoutError

INDEX = {
    "original_videos/1255229/1955256_A_001.mp4": {"label": "real", "set": "train"},
    "method_A/1255229/1255229_A/1955256_A_001.mp4": {"label": "fake", "set": "train"},
    "method_B/1255229/1255229_B/1955256_A_001.mp4": {"label": "fake", "set": "test"},
    "original_videos/2000001/2000001_B_002.mp4": {"label": "real", "set": "test"},
    "method_A/2000001/2000001_C/2000001_B_002.mp4": {"label": "fake", "set": "holdout"},
    "method_A/2000001/2000001_C/absent_001.mp4": {"label": "fake", "set": "train"},
}


def build_root(root: Path, index: dict[str, object] = INDEX) -> Path:
    """A preview tree: dataset.json plus an empty file per entry except those named absent."""
    (root / "dataset.json").write_text(json.dumps(index))
    for relative in index:
        if "absent" not in relative:
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).touch()
    return root


def catalog(root: Path) -> dict[str, VideoRecord]:
    """Scan the root and index the rows by video id."""
    return {r.video_id: r for r in scan("dfdcp", root, DatasetConfig())}


def test_ids_keep_the_whole_path_so_equal_file_names_stay_distinct(tmp_path: Path) -> None:
    rows = catalog(build_root(tmp_path))
    assert len(rows) == len(INDEX)
    assert "dfdcp/original/raw/original_videos__1255229__1955256_A_001" in rows
    row = rows["dfdcp/method_A/raw/method_A__1255229__1255229_A__1955256_A_001"]
    assert row.path == str(tmp_path / "method_A" / "1255229" / "1255229_A" / "1955256_A_001.mp4")
    assert all("." not in video_id and "/" not in video_id.split("/", 3)[3] for video_id in rows)


def test_labels_methods_and_splits_come_from_index_and_path(tmp_path: Path) -> None:
    rows = list(catalog(build_root(tmp_path)).values())
    assert {(r.method, r.label) for r in rows} == {("original", REAL), ("method_A", FAKE), ("method_B", FAKE)}
    by_split = {r.video_id.split("/")[-1]: r.split for r in rows}
    assert by_split["method_B__1255229__1255229_B__1955256_A_001"] == "test"
    assert by_split["original_videos__2000001__2000001_B_002"] == "test"
    assert by_split["method_A__2000001__2000001_C__2000001_B_002"] == "unassigned"
    assert by_split["original_videos__1255229__1955256_A_001"] == "train"


def test_family_is_the_filmed_person_shared_by_originals_and_fakes(tmp_path: Path) -> None:
    rows = catalog(build_root(tmp_path))
    families = {(r.target_id, r.family_id) for r in rows.values()}
    assert families == {("1255229", "dfdcp/family/1255229"), ("2000001", "dfdcp/family/2000001")}
    assert all(r.source_id is None for r in rows.values())


def test_indexed_but_absent_file_is_a_missing_record(tmp_path: Path) -> None:
    rows = catalog(build_root(tmp_path))
    missing = [r for r in rows.values() if r.status == "missing"]
    assert [r.video_id for r in missing] == ["dfdcp/method_A/raw/method_A__2000001__2000001_C__absent_001"]
    assert "dataset.json" in missing[0].error and "\n" not in missing[0].error


def test_order_is_sorted_and_stable(tmp_path: Path) -> None:
    root = build_root(tmp_path)
    first = [r.video_id for r in scan("dfdcp", root)]
    assert first == sorted(first) == [r.video_id for r in scan("dfdcp", root)]


@pytest.mark.parametrize(
    "index, message",
    [
        ({"method_A/1/1_A/x.mp4": {"label": "unknown", "set": "train"}}, "label"),
        ({"../escape/1/x.mp4": {"label": "fake", "set": "train"}}, "relative"),
    ],
)
def test_broken_entries_are_layout_errors(tmp_path: Path, index: dict[str, object], message: str) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps(index))
    with pytest.raises(LayoutError, match=message):
        catalog(tmp_path)


def test_unreadable_index_is_a_layout_error(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text("[1, 2")
    with pytest.raises(LayoutError, match="dataset.json"):
        catalog(tmp_path)


def test_root_without_index_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "original_videos").mkdir()
    with pytest.raises(LayoutError, match="dataset.json"):
        DFDCPreviewAdapter().check_layout(tmp_path, DFDCPOptions())
