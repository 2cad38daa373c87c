"""Hostile shards in the core readers (maps, preview, read_samples, map PNGs): bounded, one line naming the shard."""

from __future__ import annotations

import io
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import dfprep.io.payloads as payloads
from dfprep.cli import cli
from dfprep.errors import DfprepError
from dfprep.io.payloads import PayloadError, image_size, load_landmarks
from dfprep.errors import RegionMapError
from dfprep.io.regionmaps import decode_map_png
from dfprep.io.shards import ShardReadError, encode_image, read_samples
from dfprep.io.storage import Storage


@pytest.fixture()
def no_big_decode(monkeypatch):
    """Fail the test if an image larger than 4096² pixels is ever handed to OpenCV's decoder."""
    real = payloads.cv2.imdecode

    def guarded(buffer, flags):
        width, height = image_size(bytes(buffer[:4096]))
        assert width * height <= 4096 * 4096, "a gigantic image reached cv2.imdecode"
        return real(buffer, flags)

    monkeypatch.setattr(payloads.cv2, "imdecode", guarded)


def test_image_sizes_come_from_the_headers_of_jpg_png_and_webp():
    rgb = np.zeros((37, 53, 3), np.uint8)
    for image_format in ("jpg", "png", "webp"):
        assert image_size(encode_image(rgb, image_format, 90)) == (53, 37), image_format
    lossless = payloads.cv2.imencode(".webp", rgb, [payloads.cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    assert image_size(lossless) == (53, 37)
    with pytest.raises(PayloadError, match="not a jpg, png or webp image"):
        image_size(b"BM" + b"\0" * 60)  # a BMP: OpenCV would decode it, dfprep never hands it over


def test_read_samples_refuses_a_2_gb_member_before_reading_it(tmp_path, hostile):
    hostile.write_sparse_member_tar(tmp_path / "train-000000.tar")
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ShardReadError, match="member 'a-000000.jpg' declares 2147483648 bytes, over the "
                                                 "67108864-byte limit"):
            list(read_samples(Storage(str(tmp_path)), "train-000000.tar", frozenset({"jpg"})))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6 and time.monotonic() - started < 20


def test_read_samples_and_verify_refuse_a_2_gb_pax_header_before_reading_it(tmp_path, hostile):
    from dfprep.inspect.verify import read_tar

    hostile.write_pax_bomb_tar(tmp_path / "train-000000.tar")
    storage = Storage(str(tmp_path))
    tracemalloc.start()
    try:
        with pytest.raises(ShardReadError, match="an extended tar header declares 2147483648 bytes"):
            list(read_samples(storage, "train-000000.tar", frozenset({"jpg"})))
        _, _, problem, _ = read_tar(storage, "train-000000.tar", True, 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "an extended tar header declares 2147483648 bytes" in problem and peak < 20e6


def test_a_gigantic_map_png_is_refused_from_its_header(hostile, no_big_decode):
    with pytest.raises(RegionMapError, match="30000x30000 pixels is over the 16777216-pixel limit"):
        decode_map_png(hostile.gigantic_png())


def test_npy_landmarks_declaring_a_huge_shape_are_refused_without_allocating():
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 2)})
    payload = b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\0" * 64
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError, match="payload shorter than its header says"):
            load_landmarks(payload)
        assert tracemalloc.get_traced_memory()[1] < 10e6
    finally:
        tracemalloc.stop()


@pytest.fixture()
def small_out(tmp_path_factory) -> str:
    """A tiny synthetic OUT (written by the real ShardWriter) to plant hostile samples in."""
    from tests.helpers.torch_synthetic import SyntheticSpec, write_synthetic_out

    folder = tmp_path_factory.mktemp("hostile") / "out"
    write_synthetic_out(str(folder), SyntheticSpec(videos={"train": (1, 1)}, frames=2, size=32, videos_per_shard=2))
    return str(folder)


def _replace_shard(out: str, hostile, samples) -> None:
    """Overwrite train-000000.tar by hostile samples and drop its marker's sizes (as a malicious copy would)."""
    folder = Path(out)
    hostile.write_raw_tar(folder / "train-000000.tar", samples)
    marker = folder / "train-000000_stats.json"
    stats = json.loads(marker.read_text())
    for field in ("tar_bytes", "tar_sha256", "format"):
        stats.pop(field)
    marker.write_text(json.dumps(stats))


@pytest.mark.parametrize("case", ["gigantic png", "deep json", "json list", "npy bomb"])
def test_preview_and_maps_turn_hostile_samples_into_one_line(case, small_out, hostile, tmp_path, no_big_decode):
    keys = pq.read_table(Path(small_out) / "train-000000.parquet").column("key").to_pylist()
    samples = [(key, hostile.face_members(key)) for key in keys]
    first = samples[0][1]
    if case == "gigantic png":
        first["jpg"] = hostile.gigantic_png()
    elif case == "deep json":
        first["json"] = b"[" * 100_000 + b"]" * 100_000
    elif case == "json list":
        first["json"] = b"[0]"
    else:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**9, 2)})
        first["ldm.npy"] = b"\x93NUMPY\x01\x00" + header.getvalue()[8:]
    _replace_shard(small_out, hostile, samples)
    for args in (["preview", small_out, "-o", str(tmp_path / "s.png"), "--n", "8"],
                 ["maps", small_out, "--workers", "0", "--quiet"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (case, args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "train-000000.tar" in lines[0] and keys[0] in lines[0], (case, args, lines)


def test_a_hostile_face_sample_is_a_dfprep_error_in_the_map_reader(small_out, hostile):
    from dfprep.jobs.maps import read_face_samples

    samples = [("a-000000", {**hostile.face_members("a-000000"), "json": b'{"label": 0, "crc32": {"jpg": 1}}'})]
    _replace_shard(small_out, hostile, samples)
    with pytest.raises(DfprepError, match="sample 'a-000000': member .jpg does not match its recorded crc32"):
        list(read_face_samples(Storage(small_out), "train-000000"))
