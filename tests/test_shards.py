"""Keys, encoding, storage confinement and the tar → parquet → stats commit protocol."""

import io
import json
import tarfile

import cv2
import numpy as np
import pyarrow.fs as pafs
import pytest

from dfprep.io.keys import sample_key, video_slug
from dfprep.io.layout import STATS_SUFFIX
from dfprep.io.shards import Sample, ShardWriter, committed_units, encode_image, encode_npy, remove_uncommitted
from dfprep.io.storage import Storage


@pytest.mark.parametrize("video_id", ["ffpp/Deepfakes/c23/000_003", "x/../../etc/passwd", "/abs/path",
                                      "a.b.c/d", "nul\0byte", "ünïcode name/with spaces", "z" * 400])
def test_keys_are_safe(video_id):
    key = sample_key(video_id, 12)
    assert "." not in key and "/" not in key and "\0" not in key and not key.startswith("-")
    assert len(key) < 160 and key.endswith("-000012")


def test_keys_are_unique_where_ids_differ_and_stable():
    ids = ["ffpp/Deepfakes/c23/000_003", "ffpp/FaceSwap/c23/000_003", "a/b.c", "a/b_c", "a/b c"]
    slugs = [video_slug(i) for i in ids]
    assert len(set(slugs)) == len(ids)
    assert video_slug(ids[0]) == "ffpp-Deepfakes-c23-000_003" == video_slug(ids[0])
    assert sample_key(ids[0], 3, track_id=2) == "ffpp-Deepfakes-c23-000_003-000003-t2"


def test_image_and_npy_round_trip():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    for fmt in ("jpg", "png", "webp"):
        decoded = cv2.imdecode(np.frombuffer(encode_image(rgb, fmt, 95), np.uint8), cv2.IMREAD_COLOR)
        assert decoded[16, 16, 2] > 240 and decoded[16, 16, 0] < 15  # BGR: red channel last
    points = np.arange(10, dtype=np.float32).reshape(5, 2)
    assert np.array_equal(np.load(io.BytesIO(encode_npy(points)), allow_pickle=False), points)


def test_storage_refuses_escaping_names(tmp_path):
    storage = Storage(str(tmp_path))
    for name in ["../x", "/etc/passwd", "a/../../b", "a\0b"]:
        with pytest.raises(ValueError):
            storage.path(name)


def _sample(key: str) -> Sample:
    return Sample(key, {"jpg": b"\xff\xd8jpeg", "json": json.dumps({"key": key}).encode()}, {"video_id": "v"})


def test_commit_publishes_tar_then_parquet_then_stats(tmp_path):
    storage = Storage(str(tmp_path))
    writer = ShardWriter(storage, "train-000000")
    writer.add(_sample("a-000001"))
    writer.add(_sample("a-000002"))
    with pytest.raises(ValueError, match="duplicate"):
        writer.add(_sample("a-000001"))
    stats = writer.commit({"unit": "train-000000"})
    assert sorted(storage.listdir()) == ["train-000000.parquet", "train-000000.tar", f"train-000000{STATS_SUFFIX}"]
    with tarfile.open(tmp_path / "train-000000.tar") as tar:
        names = tar.getnames()
        assert names == ["a-000001.jpg", "a-000001.json", "a-000002.jpg", "a-000002.json"]
        assert all(m.mtime == 0 for m in tar.getmembers())
    assert stats["samples"] == 2 and committed_units(storage)["train-000000"]["samples"] == 2
    assert storage.read_table("train-000000.parquet").column("key").to_pylist() == ["a-000001", "a-000002"]


def test_empty_unit_writes_no_tar(tmp_path):
    storage = Storage(str(tmp_path))
    stats = ShardWriter(storage, "test-000000").commit({})
    assert storage.listdir() == [f"test-000000{STATS_SUFFIX}"] and stats["tar"] is None


def test_uncommitted_leftovers_are_removed(tmp_path):
    storage = Storage(str(tmp_path))
    for name in ["train-000000.tar", "train-000000.parquet", "train-000001.tar.tmp", "train-000002.tar"]:
        storage.write_bytes(name, b"x")
    storage.write_json(f"train-000002{STATS_SUFFIX}", {"samples": 1})
    removed = remove_uncommitted(storage, ["train-000000", "train-000001", "train-000002"], {"train-000002"})
    assert sorted(removed) == ["train-000000.parquet", "train-000000.tar", "train-000001.tar.tmp"]
    assert storage.listdir() == ["train-000002.tar", f"train-000002{STATS_SUFFIX}"]


def test_storage_through_uri_and_subtree_filesystem(tmp_path):
    by_uri = Storage(f"file://{tmp_path}/viauri")
    by_uri.makedirs()
    by_uri.write_json("x.json", {"a": 1})
    assert (tmp_path / "viauri" / "x.json").is_file()
    subtree = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    storage = Storage("out", subtree)
    storage.makedirs()
    writer = ShardWriter(storage, "val-000000")
    writer.add(_sample("k-000000"))
    writer.commit({})
    assert (tmp_path / "bucket" / "out" / "val-000000.tar").is_file()
    assert not storage.is_local and "val-000000" in committed_units(storage)


def test_read_samples_groups_members_by_key_and_refuses_odd_names(tmp_path):
    from dfprep.errors import DfprepError
    from dfprep.io.shards import read_samples

    storage = Storage(str(tmp_path))
    writer = ShardWriter(storage, "train-000000")
    writer.add(_sample("a-000001"))
    writer.add(_sample("a-000002"))
    writer.commit({})
    got = list(read_samples(storage, "train-000000.tar", frozenset({"jpg"})))
    assert got == [("a-000001", {"jpg": b"\xff\xd8jpeg"}), ("a-000002", {"jpg": b"\xff\xd8jpeg"})]
    with tarfile.open(tmp_path / "odd.tar", "w") as tar:
        tar.addfile(tarfile.TarInfo("dir/escape.jpg"), io.BytesIO(b""))
    with pytest.raises(DfprepError, match="unexpected member name 'dir/escape.jpg'"):
        list(read_samples(storage, "odd.tar", frozenset({"jpg"})))
