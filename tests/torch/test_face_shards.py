"""FaceShards: what a sample holds, exactly-once splitting, seeded order, filters, balance, maps and bad shards."""

import io
import shutil
import tarfile
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dfprep.io.shards import Sample, ShardWriter
from dfprep.io.storage import Storage  # noqa: E402
from dfprep.torch.data import FaceShards, distributed_rank  # noqa: E402
from dfprep.torch.shardio import MapMismatchError, ShardError, UnsafeMemberError  # noqa: E402
from dfprep.torch.shardlist import ShardListError  # noqa: E402
from tests.helpers.torch_synthetic import SyntheticSpec, synthetic_map, write_synthetic_out  # noqa: E402


def keys_of(dataset) -> list[str]:
    return [sample["key"] for sample in dataset]


def test_samples_hold_image_label_ids_landmarks_and_map(shared_out):
    samples = list(FaceShards(shared_out, split="train", maps="landmarks"))
    assert len(samples) == 32
    first = samples[0]
    assert first["image"].shape == (3, 32, 32) and first["image"].dtype == torch.float32
    assert 0.0 <= float(first["image"].min()) and float(first["image"].max()) <= 1.0
    assert first["label"].dtype == torch.long and int(first["label"]) in (0, 1)
    assert first["landmarks"].shape == (68, 2) and first["landmarks"].dtype == torch.float32
    expected_map = torch.from_numpy(synthetic_map(32)).float() / 255
    assert torch.equal(first["map"], expected_map)
    assert first["key"].startswith(first["video_id"].replace("/", "-"))
    assert Counter(int(s["label"]) for s in samples) == {0: 16, 1: 16}
    fake = next(s for s in samples if int(s["label"]) == 1)
    assert fake["method"] == "Fake" and fake["dataset"] == "synthetic"


def test_folder_tar_list_and_brace_pattern_name_the_same_samples(shared_out):
    by_folder = keys_of(FaceShards(shared_out, split="train"))
    tars = sorted(str(p) for p in shared_out.glob("train-*.tar"))
    assert keys_of(FaceShards(tars)) == by_folder
    assert keys_of(FaceShards(f"{shared_out}/train-{{000000..000003}}.tar")) == by_folder
    assert keys_of(FaceShards(f"file://{shared_out}", split="train")) == by_folder  # pyarrow filesystem URIs


def test_a_shard_named_twice_is_refused(shared_out):
    tar = str(shared_out / "train-000000.tar")
    with pytest.raises(ShardListError, match="more than once"):
        FaceShards([tar, tar])


@pytest.fixture(scope="module")
def five_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("five") / "out"
    write_synthetic_out(str(folder), SyntheticSpec(videos={"train": (5, 5)}, frames=3, size=16, videos_per_shard=2))
    return folder


def read_as(rank: int, world: int, workers: int, folder, epoch: int = 0, shuffle: int = 0) -> list[str]:
    dataset = FaceShards(folder, rank=rank, world_size=world, shuffle=shuffle, seed=7)
    dataset.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
    return [sample["key"] for sample in loader]


def test_two_ranks_times_two_workers_see_every_sample_exactly_once(five_shards):
    assert len(FaceShards(five_shards).shards) == 5
    everything = keys_of(FaceShards(five_shards))
    for shuffle in (0, 8):
        seen = read_as(0, 2, 2, five_shards, shuffle=shuffle) + read_as(1, 2, 2, five_shards, shuffle=shuffle)
        assert len(seen) == len(everything) == 30
        assert sorted(seen) == sorted(everything)


def test_set_epoch_reshuffles_with_the_seed(five_shards):
    first = read_as(0, 1, 0, five_shards, epoch=1, shuffle=8)
    assert read_as(0, 1, 0, five_shards, epoch=1, shuffle=8) == first  # same seed and epoch: same order
    second = read_as(0, 1, 0, five_shards, epoch=2, shuffle=8)
    assert second != first and sorted(second) == sorted(first)


def test_rank_comes_from_arguments_or_defaults_to_single_process():
    assert distributed_rank(None, None) == (0, 1)
    assert distributed_rank(1, 4) == (1, 4)
    with pytest.raises(ValueError):
        distributed_rank(4, 4)


def test_rank_comes_from_an_initialised_process_group(tmp_path, monkeypatch):
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 1)
        monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 3)
        assert distributed_rank(None, None) == (1, 3)
        assert distributed_rank(0, 2) == (0, 2)  # explicit values win
    finally:
        monkeypatch.undo()
        dist.destroy_process_group()


def test_filters_by_label_method_and_split_and_skips_shards_by_index(tmp_path, kit):
    kit.shard(tmp_path, "train-000000", [kit.sample("a-000000", 0), kit.sample("b-000000", 0)])
    kit.shard(tmp_path, "train-000001", [kit.sample("c-000000", 1), kit.sample("d-000000", 0)])
    kit.shard(tmp_path, "test-000000", [kit.sample("e-000000", 1, split="test")])
    fakes = FaceShards(tmp_path, label=1, split="train")
    assert [s.name for s in fakes.shards] == ["train-000001"]  # the all-real shard is never opened
    assert keys_of(fakes) == ["c-000000"]
    assert keys_of(FaceShards(tmp_path, split=["test"])) == ["e-000000"]
    assert keys_of(FaceShards(tmp_path, method="other")) == []


def test_balance_evens_out_real_and_fake(tmp_path):
    write_synthetic_out(str(tmp_path), SyntheticSpec(videos={"train": (2, 8)}, frames=10, size=16))
    over = Counter(int(s["label"]) for s in FaceShards(tmp_path, balance=True, seed=3))
    under = Counter(int(s["label"]) for s in FaceShards(tmp_path, balance="under", seed=3))
    assert over[1] == 80 and 60 <= over[0] <= 100  # 20 reals repeated 4x on average
    assert under[0] == 20 and 10 <= under[1] <= 30  # 80 fakes kept with probability 1/4


@pytest.mark.parametrize("member", ["pickle", "pth", "pyd", "cls", "pt", "npz", "txt"])
def test_shards_with_other_member_types_are_rejected(tmp_path, kit, member):
    tar = kit.shard(tmp_path, "train-000000", [kit.sample("a-000000"), kit.sample("b-000000", extra={member: b"x"})])
    dataset = FaceShards(str(tar))
    with pytest.raises(UnsafeMemberError, match=rf"train-000000\.tar.*b-000000\.{member}"):
        next(iter(dataset))  # rejected before the first (harmless) sample is delivered


def test_pickled_landmark_arrays_are_never_loaded(tmp_path, kit):
    payload = io.BytesIO()
    np.save(payload, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    tar = kit.shard(tmp_path, "train-000000", [kit.sample("a-000000", extra={"ldm.npy": payload.getvalue()})])
    with pytest.raises(ShardError, match="not a plain array"):
        list(FaceShards(str(tar)))


def cut_points(tar_path) -> dict[str, int]:
    with tarfile.open(tar_path) as archive:
        members = archive.getmembers()
    middle, last = members[len(members) // 2], members[-1]
    return {"inside a member": middle.offset_data + middle.size // 2, "at a header": middle.offset,
            "inside a header": middle.offset + 100, "before the end marker": last.offset_data + 512}


@pytest.mark.parametrize("where", ["inside a member", "at a header", "inside a header", "before the end marker"])
def test_truncated_shard_error_names_the_shard_and_offset(out_copy, where):
    tar = out_copy / "train-000001.tar"
    cut = cut_points(tar)[where]
    tar.write_bytes(tar.read_bytes()[:cut])
    with pytest.raises(ShardError, match=r"train-000001\.tar: truncated at byte offset \d+"):
        list(FaceShards(out_copy, split="train"))


def test_corrupt_header_is_reported_not_silently_shortened(out_copy):
    tar = out_copy / "train-000002.tar"
    data = bytearray(tar.read_bytes())
    offset = cut_points(tar)["at a header"]
    data[offset:offset + 20] = b"\xff" * 20
    tar.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=rf"train-000002\.tar: corrupt header at byte offset {offset}"):
        list(FaceShards(out_copy, split="train"))


def test_skip_bad_shards_warns_counts_and_keeps_the_rest(out_copy):
    tar = out_copy / "train-000001.tar"
    tar.write_bytes(tar.read_bytes()[:3000])
    dataset = FaceShards(out_copy, split="train", skip_bad_shards=True)
    with pytest.warns(UserWarning, match=r"skipping bad shard \(1 skipped.*train-000001\.tar"):
        samples = list(dataset)
    assert len(samples) == 24 and dataset.skipped_shards == [str(tar)]


def test_missing_samples_against_the_commit_marker_are_an_error(tmp_path, kit):
    kit.shard(tmp_path, "train-000000", [kit.sample("a-000000"), kit.sample("b-000000")])
    (tmp_path / "train-000000_stats.json").write_text('{"samples": 3, "tar": "train-000000.tar"}')
    with pytest.raises(ShardError, match="holds 2 samples but its commit marker promises 3"):
        list(FaceShards(tmp_path))


def write_maps(folder, name: str, keys: list[str]) -> None:
    writer = ShardWriter(Storage(str(folder / "maps" / "landmarks")), name)
    png = __import__("cv2").imencode(".png", synthetic_map(16))[1].tobytes()
    for key in keys:
        writer.add(Sample(key, {"prmap.png": png}, {}))
    writer.commit({})


def test_maps_are_joined_by_key_and_a_mismatch_is_an_error(tmp_path, kit):
    kit.shard(tmp_path, "train-000000", [kit.sample("a-000000"), kit.sample("b-000000")])
    (tmp_path / "maps" / "landmarks").mkdir(parents=True)
    write_maps(tmp_path, "train-000000", ["a-000000", "b-000000"])
    assert [s["map"].shape for s in FaceShards(tmp_path, maps="landmarks")] == [(16, 16)] * 2
    write_maps(tmp_path, "train-000000", ["b-000000", "a-000000"])
    with pytest.raises(MapMismatchError, match="sample 0 is 'b-000000'.*has 'a-000000'"):
        list(FaceShards(tmp_path, maps="landmarks"))
    write_maps(tmp_path, "train-000000", ["a-000000"])
    with pytest.raises(MapMismatchError, match="map shard ended"):
        list(FaceShards(tmp_path, maps="landmarks"))


def test_missing_map_shards_are_reported_up_front(out_copy):
    (out_copy / "maps" / "landmarks" / "val-000000.tar").unlink()
    FaceShards(out_copy, maps="landmarks", split="train")  # other splits do not need it
    with pytest.raises(ShardListError, match=r"map shard missing.*val-000000\.tar"):
        FaceShards(out_copy, maps="landmarks")
    shutil.rmtree(out_copy / "maps")
    with pytest.raises(ShardListError, match="dfprep maps"):
        FaceShards(out_copy, maps="landmarks", split="train")


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float32).reshape(6, 2),
                                   np.asfortranarray(np.arange(12, dtype=">f8").reshape(6, 2)),
                                   np.zeros((0, 2), np.float32)])
@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_plain_npy_reader_matches_numpy(array, version):
    from dfprep.torch.data import load_plain_npy

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version, allow_pickle=False)
    loaded = load_plain_npy(buffer.getvalue())
    assert loaded.dtype == array.dtype and np.array_equal(loaded, np.load(io.BytesIO(buffer.getvalue())))
    if array.size:
        with pytest.raises(ValueError, match="shorter"):
            load_plain_npy(buffer.getvalue()[:-1])
