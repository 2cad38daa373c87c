"""Hostile shards in FaceShards: bounded before any allocation, and every case a ShardError naming shard and key.

Each case must (a) raise ShardError, the error `skip_bad_shards` catches, never a RecursionError,
AttributeError or a collate error, and (b) never hand a gigantic image to the decoder or read a gigantic
member (asserted by watching cv2.imdecode and the reader's peak traced memory).
"""

from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import dfprep.io.payloads as payloads  # noqa: E402
from dfprep.io.payloads import ReadLimits  # noqa: E402
from dfprep.io.shards import encode_npy  # noqa: E402
from dfprep.torch.data import FaceShards  # noqa: E402
from dfprep.torch.shardio import ShardError  # noqa: E402


@pytest.fixture()
def no_big_decode(monkeypatch):
    """Fail the test if an image larger than 4096² pixels is ever handed to OpenCV's decoder."""
    real = payloads.cv2.imdecode

    def guarded(buffer, flags):
        width, height = payloads.image_size(bytes(buffer[:4096]))
        assert width * height <= 4096 * 4096, "a gigantic image reached cv2.imdecode"
        return real(buffer, flags)

    monkeypatch.setattr(payloads.cv2, "imdecode", guarded)


def _read_all(tar, **options) -> list[dict]:
    return list(FaceShards(str(tar), **options))


def _bounded(function, seconds: float = 20, megabytes: float = 50):
    """Run function, returning its exception; assert it is quick and its traced memory small."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        function()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        raised = exc
    else:
        raised = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.monotonic() - started < seconds and peak < megabytes * 1e6, (time.monotonic() - started, peak)
    return raised


def test_a_png_declaring_30000_squared_pixels_is_refused_from_its_header(tmp_path, hostile, no_big_decode):
    members = hostile.face_members("a-000000")
    members["jpg"] = hostile.gigantic_png()  # a PNG under a .jpg name: OpenCV sniffs the content anyway
    tar = hostile.write_raw_tar(tmp_path / "train-000000.tar", [("a-000000", members)])
    raised = _bounded(lambda: _read_all(tar))
    assert isinstance(raised, ShardError)
    assert str(raised) == (f"{tar}: a-000000.jpg: image of 30000x30000 pixels is over the 16777216-pixel limit")
    with pytest.warns(UserWarning, match="over the 16777216-pixel limit"):
        assert _read_all(tar, skip_bad_shards=True) == []
    roomy = ReadLimits(max_image_pixels=30000 * 30000 + 1)
    assert ReadLimits().max_image_pixels == 4096 * 4096 and roomy.max_image_pixels > 9e8  # configurable


def test_a_member_declaring_2_gb_is_refused_before_it_is_read(tmp_path, hostile):
    tar = hostile.write_sparse_member_tar(tmp_path / "train-000000.tar")
    raised = _bounded(lambda: _read_all(tar))
    assert isinstance(raised, ShardError)
    assert str(raised) == (f"{tar}: member 'a-000000.jpg' declares 2147483648 bytes, over the 67108864-byte limit "
                           "(ReadLimits.max_member_bytes)")


def test_a_pax_header_declaring_2_gb_is_refused_before_tarfile_reads_it(tmp_path, hostile):
    tar = hostile.write_pax_bomb_tar(tmp_path / "train-000000.tar")
    raised = _bounded(lambda: _read_all(tar))
    assert isinstance(raised, ShardError) and "an extended tar header declares 2147483648 bytes" in str(raised)


def test_a_tar_with_too_many_members_is_refused(tmp_path, hostile):
    samples = [(f"k{i}-000000", {"json": b"{}"}) for i in range(30)]
    tar = hostile.write_raw_tar(tmp_path / "train-000000.tar", samples)
    with pytest.raises(ShardError, match="more than 20 members"):
        _read_all(tar, limits=ReadLimits(max_members=20))


def test_the_member_size_cap_is_configurable(tmp_path, hostile):
    tar = hostile.write_raw_tar(tmp_path / "train-000000.tar", [("a-000000", hostile.face_members("a-000000"))])
    assert len(_read_all(tar)) == 1
    with pytest.raises(ShardError, match="over the 100-byte limit"):
        _read_all(tar, limits=ReadLimits(max_member_bytes=100))


HOSTILE_JSON = {
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, "json nested too deeply"),
    "a list": (b"[1, 2, 3]", "json is a list, expected an object"),
    "frame x": (json.dumps({"label": 0, "frame": "x"}).encode(), "json field 'frame' is 'x', expected int"),
    "label true": (json.dumps({"label": True}).encode(), "label 'True', expected 0 (real) or 1 (fake)"),
    "video_id list": (json.dumps({"label": 1, "video_id": [1]}).encode(), "json field 'video_id' is '[1]'"),
    "crc32 list": (json.dumps({"label": 1, "crc32": [1]}).encode(), "json field 'crc32' is '[1]', expected dict"),
    "over 1 MiB": (json.dumps({"label": 1, "pad": "x" * 2**20}).encode(), "over the 1048576-byte limit"),
}


@pytest.mark.parametrize("case", list(HOSTILE_JSON))
def test_hostile_json_is_a_shard_error_naming_shard_and_key(case, tmp_path, hostile):
    payload, message = HOSTILE_JSON[case]
    good = ("a-000000", hostile.face_members("a-000000"))
    bad = ("b-000000", {**hostile.face_members("b-000000"), "json": payload})
    tar = hostile.write_raw_tar(tmp_path / "train-000000.tar", [good, bad])
    raised = _bounded(lambda: _read_all(tar))
    assert isinstance(raised, ShardError), repr(raised)
    assert str(raised).startswith(f"{tar}: sample 'b-000000': ") and message in str(raised)
    with pytest.warns(UserWarning, match="skipping bad shard"):
        _read_all(tar, skip_bad_shards=True)


@pytest.mark.parametrize("landmarks, message", [
    (np.zeros((68, 3), np.float32), "landmarks have shape (68, 3)"),
    (np.zeros((68, 2), np.int64), "expected (N, 2) floats"),
    (np.zeros((0, 2), np.float32), "with 0 < N <= 10000"),
    (np.zeros((5, 2), np.float32), "landmarks of shape (5, 2), but earlier samples of this stream have (68, 2)"),
])
def test_landmarks_of_the_wrong_shape_never_reach_the_collate(landmarks, message, tmp_path, hostile):
    members = {**hostile.face_members("b-000000"), "ldm.npy": encode_npy(landmarks)}
    tar = hostile.write_raw_tar(tmp_path / "train-000000.tar",
                                [("a-000000", hostile.face_members("a-000000")), ("b-000000", members),
                                 ("c-000000", hostile.face_members("c-000000"))])
    loader = torch.utils.data.DataLoader(FaceShards(str(tar)), batch_size=3)
    with pytest.raises(ShardError, match=f"train-000000.tar: .*b-000000.*{message.replace('(', '.').replace(')', '.')}"):
        list(loader)
    with pytest.warns(UserWarning, match="skipping bad sample"):
        (batch,) = list(torch.utils.data.DataLoader(FaceShards(str(tar), skip_bad_shards=True), batch_size=3))
    assert batch["key"] == ["a-000000", "c-000000"] and tuple(batch["landmarks"].shape) == (2, 68, 2)


def test_an_image_of_another_size_mid_stream_is_a_shard_error_not_a_collate_error(tmp_path, hostile):
    tar = hostile.write_raw_tar(tmp_path / "train-000000.tar",
                                [("a-000000", hostile.face_members("a-000000")),
                                 ("b-000000", hostile.face_members("b-000000", size=48))])
    with pytest.raises(ShardError, match=r"sample 'b-000000': image of shape \(3, 48, 48\), but earlier samples"):
        list(torch.utils.data.DataLoader(FaceShards(str(tar)), batch_size=2))


def test_an_image_member_that_is_no_jpg_png_or_webp_is_refused_unread(tmp_path, hostile, no_big_decode):
    members = {**hostile.face_members("a-000000"), "jpg": b"II*\x00" + b"\x00" * 100}  # a TIFF header
    tar = hostile.write_raw_tar(tmp_path / "train-000000.tar", [("a-000000", members)])
    with pytest.raises(ShardError, match="a-000000.jpg: not a jpg, png or webp image"):
        _read_all(tar)
