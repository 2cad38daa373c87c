"""DeeperForensics-1.0 adapter: fake ids per perturbation, split lists, reals taken from FF++."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfprep.catalog import get_adapter, scan
from dfprep.catalog.base import VideoRecord
from dfprep.config import DatasetConfig
from dfprep.errors import LayoutError


def touch(root: Path, *relative: str) -> None:
    """Create empty files (and their folders) below root."""
    for name in relative:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def by_id(root: Path, options: DatasetConfig | None = None) -> dict[str, VideoRecord]:
    """Scan and index the records by video_id (asserting ids are unique)."""
    records = list(scan("deeperforensics", root, options))
    assert len(records) == len({r.video_id for r in records})
    return {r.video_id: r for r in records}


@pytest.fixture
def df_root(tmp_path: Path) -> Path:
    """Two perturbations, targets 000 (train+test fakes), 001 (val), 002 (unlisted, absent in FF++)."""
    root = tmp_path / "DeeperForensics-1.0"
    touch(
        root,
        "manipulated_videos/end_to_end/000_M101.mp4",
        "manipulated_videos/end_to_end/001_W102.mp4",
        "manipulated_videos/end_to_end/002_M103.mp4",
        "manipulated_videos/end_to_end_level_1_color_saturation/000_M101.mp4",
        "manipulated_videos/reenact_postprocess/000_W104.mp4",
        "manipulated_videos/end_to_end/readme.txt",
    )
    lists = root / "lists" / "splits"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("000_M101.mp4\n\n")
    (lists / "val.txt").write_text("manipulated_videos/end_to_end/001_W102.mp4\r\n")
    (lists / "test.txt").write_text("000_W104.mp4\n")
    return root


@pytest.fixture
def ffpp_root(tmp_path: Path) -> Path:
    """FF++ youtube originals at c23 and raw; 002 is deliberately absent."""
    root = tmp_path / "ffpp"
    touch(
        root,
        "original_sequences/youtube/c23/videos/000.mp4",
        "original_sequences/youtube/c23/videos/001.mp4",
        "original_sequences/youtube/raw/videos/000.mp4",
    )
    return root


def test_fakes_without_ffpp_root(df_root: Path) -> None:
    records = by_id(df_root)
    assert sorted(records) == [
        "deeperforensics/DF-VAE/end_to_end/000_M101",
        "deeperforensics/DF-VAE/end_to_end/001_W102",
        "deeperforensics/DF-VAE/end_to_end/002_M103",
        "deeperforensics/DF-VAE/end_to_end_level_1_color_saturation/000_M101",
        "deeperforensics/DF-VAE/reenact_postprocess/000_W104",
    ]
    assert {r.label for r in records.values()} == {1}
    fake = records["deeperforensics/DF-VAE/end_to_end_level_1_color_saturation/000_M101"]
    assert (fake.target_id, fake.source_id, fake.compression) == ("000", "M101", "end_to_end_level_1_color_saturation")
    assert fake.family_id == "deeperforensics/youtube/c23/000"
    assert Path(fake.path).is_file()


def test_split_lists_apply_across_perturbations(df_root: Path) -> None:
    splits = {vid: r.split for vid, r in by_id(df_root).items()}
    assert splits == {
        "deeperforensics/DF-VAE/end_to_end/000_M101": "train",
        "deeperforensics/DF-VAE/end_to_end/001_W102": "val",
        "deeperforensics/DF-VAE/end_to_end/002_M103": "unassigned",
        "deeperforensics/DF-VAE/end_to_end_level_1_color_saturation/000_M101": "train",
        "deeperforensics/DF-VAE/reenact_postprocess/000_W104": "test",
    }


def test_reals_from_ffpp_take_the_strictest_split(df_root: Path, ffpp_root: Path) -> None:
    records = list(scan("deeperforensics", df_root, DatasetConfig(ffpp_root=str(ffpp_root))))
    reals = [r for r in records if r.label == 0]
    assert [(r.video_id, r.split, r.status) for r in reals] == [
        ("deeperforensics/youtube/c23/000", "test", "found"),
        ("deeperforensics/youtube/c23/001", "val", "found"),
        ("deeperforensics/youtube/c23/002", "unassigned", "missing"),
    ]
    assert reals[0].path == str(ffpp_root / "original_sequences/youtube/c23/videos/000.mp4")
    assert all(r.family_id == r.video_id and r.method == "youtube" for r in reals)
    assert "002.mp4" in reals[2].error and "\n" not in reals[2].error
    assert reals[0].error == ""
    fake_families = {r.family_id for r in records if r.label == 1}
    assert fake_families == {r.video_id for r in reals}


def test_reals_fall_back_to_raw_when_ffpp_has_no_c23(df_root: Path, ffpp_root: Path) -> None:
    for video in (ffpp_root / "original_sequences/youtube/c23/videos").iterdir():
        video.unlink()
    (ffpp_root / "original_sequences/youtube/c23/videos").rmdir()
    records = by_id(df_root, DatasetConfig(ffpp_root=str(ffpp_root)))
    assert records["deeperforensics/youtube/raw/000"].status == "found"
    assert records["deeperforensics/youtube/raw/001"].status == "missing"
    assert records["deeperforensics/DF-VAE/end_to_end/000_M101"].family_id == "deeperforensics/youtube/raw/000"


def test_missing_split_lists_leave_fakes_unassigned(df_root: Path) -> None:
    for split_list in (df_root / "lists" / "splits").iterdir():
        split_list.unlink()
    assert {r.split for r in by_id(df_root).values()} == {"unassigned"}


def test_method_filter_keeps_only_reals(df_root: Path, ffpp_root: Path) -> None:
    options = DatasetConfig(ffpp_root=str(ffpp_root), methods=("youtube",))
    assert sorted(by_id(df_root, options)) == [
        "deeperforensics/youtube/c23/000",
        "deeperforensics/youtube/c23/001",
        "deeperforensics/youtube/c23/002",
    ]


def test_wrong_root_is_a_layout_error(tmp_path: Path) -> None:
    touch(tmp_path, "videos/000_M101.mp4")
    with pytest.raises(LayoutError, match=r"manipulated_videos.*found videos/"):
        list(scan("deeperforensics", tmp_path))


def test_ffpp_root_without_youtube_originals_is_a_layout_error(df_root: Path, tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="dataset.ffpp_root"):
        list(scan("deeperforensics", df_root, DatasetConfig(ffpp_root=str(tmp_path / "empty"))))


def test_documentation_tells_where_reals_come_from() -> None:
    adapter = get_adapter("deeperforensics")
    assert "ffpp_root" in adapter.summary and "ffpp_root" in adapter.labels
    assert "test > val > train" in adapter.labels
