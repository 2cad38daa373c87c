"""FaceForensics++ adapter: ids, labels, official pair splits, DFD lineage, masks, layout errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfprep.catalog import scan
from dfprep.catalog.base import VideoRecord
from dfprep.config import DatasetConfig
from dfprep.errors import LayoutError

FFPP_MINI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ffpp-mini"


def touch(root: Path, *relative: str) -> None:
    """Create empty files (and their folders) below root."""
    for name in relative:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def write_splits(folder: Path, **pairs: list[list[str]]) -> None:
    """Official-style split files: split name → list of [target, source] pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, content in pairs.items():
        (folder / f"{split}.json").write_text(json.dumps(content))


def by_id(root: Path, options: DatasetConfig | None = None) -> dict[str, VideoRecord]:
    """Scan and index the records by video_id (asserting ids are unique)."""
    records = list(scan("ffpp", root, options))
    ids = [r.video_id for r in records]
    assert len(ids) == len(set(ids))
    return {r.video_id: r for r in records}


@pytest.fixture
def ffpp_root(tmp_path: Path) -> Path:
    """A small FF++ tree: youtube originals, two methods sharing a name, DFD, a mask, split files."""
    touch(
        tmp_path,
        "original_sequences/youtube/c23/videos/000.mp4",
        "original_sequences/youtube/c23/videos/003.mp4",
        "original_sequences/youtube/raw/videos/000.mp4",
        "original_sequences/actors/c23/videos/01__exit_phone_room.mp4",
        "manipulated_sequences/Deepfakes/c23/videos/000_003.mp4",
        "manipulated_sequences/Deepfakes/c23/videos/003_000.mp4",
        "manipulated_sequences/Deepfakes/masks/videos/000_003.mp4",
        "manipulated_sequences/FaceSwap/c23/videos/000_003.mp4",
        "manipulated_sequences/FaceSwap/c40/videos/100_200.mp4",
        "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__exit_phone_room__YVGY8LOK.mp4",
        "manipulated_sequences/Deepfakes/c23/videos/notes.txt",
    )
    write_splits(tmp_path / "splits", train=[["000", "003"]], val=[["100", "200"]], test=[["953", "974"]])
    return tmp_path


def test_same_pair_under_two_methods_gets_two_ids(ffpp_root: Path) -> None:
    records = by_id(ffpp_root)
    deepfakes, faceswap = records["ffpp/Deepfakes/c23/000_003"], records["ffpp/FaceSwap/c23/000_003"]
    assert (deepfakes.method, faceswap.method) == ("Deepfakes", "FaceSwap")
    assert deepfakes.family_id == faceswap.family_id == "ffpp/youtube/c23/000"
    assert (deepfakes.target_id, deepfakes.source_id) == ("000", "003")


def test_counts_labels_and_order(ffpp_root: Path) -> None:
    records = list(scan("ffpp", ffpp_root))
    assert [r.video_id for r in records] == [
        "ffpp/actors/c23/01__exit_phone_room",
        "ffpp/youtube/raw/000",
        "ffpp/youtube/c23/000",
        "ffpp/youtube/c23/003",
        "ffpp/DeepFakeDetection/c23/01_02__exit_phone_room__YVGY8LOK",
        "ffpp/Deepfakes/c23/000_003",
        "ffpp/Deepfakes/c23/003_000",
        "ffpp/FaceSwap/c23/000_003",
        "ffpp/FaceSwap/c40/100_200",
    ]
    assert [r.label for r in records] == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert all(Path(r.path).is_absolute() and Path(r.path).is_file() for r in records)


def test_both_pair_orders_follow_the_pair_split(ffpp_root: Path) -> None:
    records = by_id(ffpp_root)
    assert records["ffpp/Deepfakes/c23/000_003"].split == "train"
    assert records["ffpp/Deepfakes/c23/003_000"].split == "train"
    assert records["ffpp/Deepfakes/c23/003_000"].family_id == "ffpp/youtube/c23/003"
    assert records["ffpp/youtube/c23/003"].split == "train"
    assert records["ffpp/FaceSwap/c40/100_200"].split == "val"
    assert records["ffpp/FaceSwap/c40/100_200"].family_id == "ffpp/youtube/c40/100"


def test_original_is_its_own_family(ffpp_root: Path) -> None:
    original = by_id(ffpp_root)["ffpp/youtube/raw/000"]
    assert original.family_id == original.video_id
    assert (original.target_id, original.source_id, original.compression) == ("000", None, "raw")


def test_deepfakedetection_lineage_and_default_test_split(ffpp_root: Path) -> None:
    records = by_id(ffpp_root)
    fake = records["ffpp/DeepFakeDetection/c23/01_02__exit_phone_room__YVGY8LOK"]
    actor = records["ffpp/actors/c23/01__exit_phone_room"]
    assert fake.family_id == actor.video_id
    assert (fake.target_id, fake.source_id) == ("01", "02")
    assert (fake.split, actor.split) == ("test", "test")
    assert actor.target_id == "01"


def test_dfd_split_option(ffpp_root: Path) -> None:
    records = by_id(ffpp_root, DatasetConfig(dfd_split="train"))
    assert records["ffpp/DeepFakeDetection/c23/01_02__exit_phone_room__YVGY8LOK"].split == "train"
    assert records["ffpp/actors/c23/01__exit_phone_room"].split == "train"


def test_mask_recorded_only_where_present(ffpp_root: Path) -> None:
    records = by_id(ffpp_root)
    mask = ffpp_root / "manipulated_sequences/Deepfakes/masks/videos/000_003.mp4"
    assert records["ffpp/Deepfakes/c23/000_003"].mask_path == str(mask)
    assert records["ffpp/Deepfakes/c23/003_000"].mask_path is None
    assert records["ffpp/FaceSwap/c23/000_003"].mask_path is None
    assert not any(r.compression == "masks" for r in records.values())


def test_missing_split_files_leave_everything_unassigned(ffpp_root: Path) -> None:
    for split_file in (ffpp_root / "splits").iterdir():
        split_file.unlink()
    records = by_id(ffpp_root)
    youtube = {r.split for r in records.values() if r.method not in ("actors", "DeepFakeDetection")}
    assert youtube == {"unassigned"}


def test_unlisted_pair_is_unassigned(ffpp_root: Path) -> None:
    touch(ffpp_root, "manipulated_sequences/Face2Face/c23/videos/000_200.mp4")
    assert by_id(ffpp_root)["ffpp/Face2Face/c23/000_200"].split == "unassigned"


def test_splits_option_points_elsewhere(ffpp_root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other-splits")
    write_splits(other, test=[["003", "000"]])
    records = by_id(ffpp_root, DatasetConfig(splits=str(other)))
    assert records["ffpp/Deepfakes/c23/000_003"].split == "test"
    assert records["ffpp/FaceSwap/c40/100_200"].split == "unassigned"


def test_filters_by_compression_and_method(ffpp_root: Path) -> None:
    options = DatasetConfig(compressions=("c23",), methods=("youtube", "FaceSwap"))
    assert sorted(by_id(ffpp_root, options)) == [
        "ffpp/FaceSwap/c23/000_003",
        "ffpp/youtube/c23/000",
        "ffpp/youtube/c23/003",
    ]


def test_wrong_root_names_expected_and_found(tmp_path: Path) -> None:
    touch(tmp_path, "videos/a.mp4")
    with pytest.raises(LayoutError, match=r"original_sequences/.*found videos/"):
        list(scan("ffpp", tmp_path))


def test_explicit_splits_folder_must_exist(ffpp_root: Path) -> None:
    with pytest.raises(LayoutError, match="dataset.splits"):
        list(scan("ffpp", ffpp_root, DatasetConfig(splits=str(ffpp_root / "nope"))))


def test_malformed_split_file_names_the_file(ffpp_root: Path) -> None:
    (ffpp_root / "splits" / "val.json").write_text('{"not": "pairs"}')
    with pytest.raises(LayoutError, match="val.json"):
        list(scan("ffpp", ffpp_root))


@pytest.mark.integration
@pytest.mark.skipif(not FFPP_MINI.is_dir(), reason=f"FF++ sample data not found at {FFPP_MINI}")
def test_ffpp_mini_official_splits() -> None:
    records = by_id(FFPP_MINI)
    splits = {r.video_id.rsplit("/", 1)[1]: r.split for r in records.values()}
    assert splits == {
        "004": "val",
        "519": "train",
        "634": "test",
        "519_515": "train",
        "750_743": "train",
        "634_660": "test",
        "004_982": "val",
    }
    assert sorted(r.label for r in records.values()) == [0, 0, 0, 1, 1, 1, 1]
    assert {r.target_id for r in records.values() if r.label == 0} == {"004", "519", "634"}
    assert records["ffpp/Face2Face/c23/750_743"].family_id == "ffpp/youtube/c23/750"
    assert all(r.compression == "c23" and r.status == "found" for r in records.values())
