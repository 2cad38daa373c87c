"""Damaged outputs never pass as complete: markers record sizes and sha256s, samples their crc32s,
`dfprep verify` finds every kind of damage, every reader refuses or flags it, and an extract rerun repairs it."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dfprep.catalog import scan
from dfprep.cli import cli
from dfprep.config import load_config
from dfprep.inspect.verify import verify_output
from dfprep.io.integrity import damaged_units, output_problems
from dfprep.io.layout import DATASET_JSON
from dfprep.runner.run import extract_run
from dfprep.io.shards import committed_units
from dfprep.io.storage import Storage
from dfprep.inspect.stats import compute_stats, format_stats

SHARD = "train-000000"


def _config():
    return load_config(None, {"sampling.frames": 2, "output.videos_per_shard": 3, "ray.workers": 0})


@pytest.fixture(scope="module")
def extracted(folder_dataset, tmp_path_factory) -> Path:
    """A real extract output (8 videos, 3 shards) that no test may change."""
    out = tmp_path_factory.mktemp("integrity") / "out"
    config = _config()
    extract_run(scan("folder", folder_dataset, config.dataset), config, str(out), quiet=True)
    return out


@pytest.fixture()
def copy(extracted, tmp_path) -> Path:
    """A private copy to damage."""
    target = tmp_path / "out"
    shutil.copytree(extracted, target)
    return target


def _rerun(folder_dataset: Path, out: Path):
    config = _config()
    return extract_run(scan("folder", folder_dataset, config.dataset), config, str(out), quiet=True)


def _member(tar_path: Path, suffix: str, index: int = 0) -> tarfile.TarInfo:
    with tarfile.open(tar_path) as tar:
        return [m for m in tar.getmembers() if m.name.endswith(suffix)][index]


def flip_jpg_bytes(out: Path) -> str:
    """XOR 64 bytes in the middle of the second jpg member (size unchanged); returns its key."""
    tar_path = out / f"{SHARD}.tar"
    member = _member(tar_path, ".jpg", 1)
    data = bytearray(tar_path.read_bytes())
    start = member.offset_data + member.size // 2
    data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
    tar_path.write_bytes(bytes(data))
    return member.name.split(".")[0]


def truncate_tar(out: Path) -> None:
    tar_path = out / f"{SHARD}.tar"
    tar_path.write_bytes(tar_path.read_bytes()[: tar_path.stat().st_size // 2])


DAMAGE = {
    "truncated tar": (truncate_tar, "train-000000.tar has"),
    "deleted parquet": (lambda out: (out / f"{SHARD}.parquet").unlink(), "train-000000.parquet (the shard's index) is missing"),
    "flipped jpg bytes": (flip_jpg_bytes, "member .jpg does not match its recorded crc32"),
    "deleted marker": (lambda out: (out / f"{SHARD}_stats.json").unlink(), "planned but not committed"),
}


def test_markers_record_size_and_sha256_of_what_they_published(extracted):
    for unit, stats in committed_units(Storage(str(extracted))).items():
        tar, index = extracted / f"{unit}.tar", extracted / f"{unit}.parquet"
        assert stats["format"] == 2
        assert (stats["tar_bytes"], stats["tar_sha256"]) == (tar.stat().st_size, hashlib.sha256(tar.read_bytes()).hexdigest())
        assert (stats["parquet_bytes"], stats["parquet_sha256"]) == (index.stat().st_size,
                                                                     hashlib.sha256(index.read_bytes()).hexdigest())


def test_every_sample_json_records_the_crc32_of_each_other_member(extracted):
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in extracted.glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    assert samples
    for key, members in samples.items():
        recorded = json.loads(members.pop("json"))["crc32"]
        assert recorded == {extension: zlib.crc32(payload) for extension, payload in members.items()}
        assert set(recorded) >= {"jpg", "ldm.npy"}


def test_a_clean_output_verifies_clean_with_exit_0(extracted):
    for extra in ([], ["--deep"]):
        result = CliRunner().invoke(cli, ["verify", str(extracted), "--quiet", *extra])
        assert result.exit_code == 0, result.output
        assert result.output.strip().splitlines() == [f"{extracted}: clean, 3 shards, "
                                                      f"{sum(1 for _ in _keys(extracted))} samples"
                                                      + (" (sha256 too)" if extra else "")]


def _keys(out: Path):
    for index in sorted(out.glob("train-*.parquet")):
        yield from pq.read_table(index).column("key").to_pylist()


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_verify_names_each_damaged_shard_in_one_line_and_exits_1(damage, copy):
    make, reason = DAMAGE[damage]
    make(copy)
    result = CliRunner().invoke(cli, ["verify", str(copy), "--quiet"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{'incomplete' if 'marker' in damage else 'damaged'}: {SHARD}: ")
    assert reason in lines[0] and lines[1].startswith(f"{copy}: 1 problem(s)")
    report = json.loads(CliRunner().invoke(cli, ["verify", str(copy), "--quiet", "--json"]).output)
    assert report["clean"] is False and [p["shard"] for p in report["problems"]] == [SHARD]


@pytest.mark.parametrize("damage", ["truncated tar", "deleted parquet", "deleted marker"])
def test_stats_says_incomplete_when_markers_sizes_or_indexes_disagree(damage, copy):
    DAMAGE[damage][0](copy)
    stats = compute_stats(str(copy))
    assert stats["shards"]["complete"] is False
    header = format_stats(stats).splitlines()[1]
    if damage == "deleted marker":
        assert header.startswith("  complete:  NO (2/3 planned shards committed")
    else:
        assert header.startswith(f"  complete:  no (1 damaged: {SHARD}: ") and DAMAGE[damage][1] in header


@pytest.mark.parametrize("damage", ["truncated tar", "deleted parquet", "flipped jpg bytes"])
def test_preview_and_maps_give_one_line_naming_the_shard(damage, copy, tmp_path):
    DAMAGE[damage][0](copy)
    for args in (["preview", str(copy), "-o", str(tmp_path / "sheet.png"), "--n", "200"],
                 ["maps", str(copy), "--workers", "0", "--quiet"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and SHARD in result.output, result.output
        assert "Traceback" not in result.output


def _tar_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


@pytest.mark.parametrize("damage", ["truncated tar", "deleted parquet", "deleted marker"])
def test_an_extract_rerun_redoes_a_damaged_or_uncommitted_shard(damage, copy, extracted, folder_dataset):
    DAMAGE[damage][0](copy)
    report = _rerun(folder_dataset, copy)
    assert report.units_skipped == 2 and (damage == "deleted marker" or "redoing damaged shard" in report.note)
    assert verify_output(str(copy), deep=True).clean
    assert _tar_bytes(copy) == _tar_bytes(extracted)
    assert (copy / f"{SHARD}.parquet").read_bytes() == (extracted / f"{SHARD}.parquet").read_bytes()


def test_flipped_bytes_are_repaired_by_verify_repair_then_an_extract_rerun(copy, extracted, folder_dataset):
    flip_jpg_bytes(copy)
    assert damaged_units(Storage(str(copy)), committed_units(Storage(str(copy)))) == {}  # same size: not cheap
    result = CliRunner().invoke(cli, ["verify", str(copy), "--quiet", "--repair"])
    assert result.exit_code == 1 and "un-committed 3 files" in result.output
    assert not (copy / f"{SHARD}_stats.json").exists()
    _rerun(folder_dataset, copy)
    assert verify_output(str(copy), deep=True).clean and _tar_bytes(copy) == _tar_bytes(extracted)


def test_deep_verify_also_catches_what_the_crc32s_do_not_cover(copy):
    tar_path = copy / f"{SHARD}.tar"
    member = _member(tar_path, ".json")
    data = bytearray(tar_path.read_bytes())
    text = data[member.offset_data:member.offset_data + member.size]
    position = member.offset_data + text.index(b'"bbox":[') + len(b'"bbox":[')
    data[position] = ord("9") if data[position] != ord("9") else ord("8")  # a bbox digit: still valid JSON
    tar_path.write_bytes(bytes(data))
    assert verify_output(str(copy)).clean
    deep = verify_output(str(copy), deep=True)
    assert [(d.shard, d.reason) for d in deep.problems] == [(SHARD, f"{SHARD}.tar sha256 differs from its commit "
                                                             "marker (damaged bytes)")]


def test_a_json_whose_label_disagrees_with_the_index_is_damage(copy):
    tar_path = copy / f"{SHARD}.tar"
    member = _member(tar_path, ".json")
    data = bytearray(tar_path.read_bytes())
    text = bytes(data[member.offset_data:member.offset_data + member.size])
    label = text.index(b'"label":') + len(b'"label":')
    data[member.offset_data + label] = ord("1") if text[label:label + 1] == b"0" else ord("0")
    tar_path.write_bytes(bytes(data))
    problems = verify_output(str(copy)).problems
    assert len(problems) == 1 and "its json says label" in problems[0].reason


def test_output_problems_is_empty_for_a_whole_output_and_names_what_is_missing(extracted, copy):
    assert output_problems(str(extracted)) == []
    (copy / DATASET_JSON).unlink()
    assert [d.reason for d in output_problems(str(copy))] == [f"no readable {DATASET_JSON}: the extract has not finished"]


def test_verify_refuses_a_folder_that_is_not_an_output(tmp_path):
    result = CliRunner().invoke(cli, ["verify", str(tmp_path)])
    assert result.exit_code == 2 and result.output.strip() == (f"dfprep: error: {tmp_path} is not a dfprep output "
                                                                "(no dataset.json and no commit markers)")


def test_map_shards_are_verified_against_their_face_shards_and_redone_when_damaged(copy):
    from dfprep.config.schema import RayConfig
    from dfprep.jobs.maps import MapRun, MapSettings
    from dfprep.runner.run import maps_run

    maps_run(str(copy), MapRun(MapSettings(), RayConfig(workers=0), quiet=True))
    map_tar = copy / "maps" / "landmarks" / f"{SHARD}.tar"
    original = map_tar.read_bytes()
    member = _member(map_tar, ".prmap.png")
    data = bytearray(original)
    data[member.offset_data + member.size // 2] ^= 0xFF
    map_tar.write_bytes(bytes(data))
    problems = verify_output(str(copy)).problems
    assert [(d.shard, d.reason.split(": ", 1)[1]) for d in problems] == [
        (f"maps/landmarks/{SHARD}", "member .prmap.png does not match its recorded crc32 (damaged bytes)")]
    map_tar.write_bytes(original[: len(original) // 2])
    report = maps_run(str(copy), MapRun(MapSettings(), RayConfig(workers=0), quiet=True))
    assert report.maps_written > 0 and map_tar.read_bytes() == original
    assert verify_output(str(copy), deep=True).clean


def test_preview_of_an_incomplete_output_says_so_below_the_sheet(copy, tmp_path):
    (copy / f"{SHARD}_stats.json").unlink()
    result = CliRunner().invoke(cli, ["preview", str(copy), "-o", str(tmp_path / "sheet.png"), "--n", "4"])
    assert result.exit_code == 0 and (tmp_path / "sheet.png").exists()
    assert result.output.strip().splitlines()[1] == (f"  note: {copy} is incomplete or damaged: 1 problem (first: "
                                                     f"{SHARD}: planned but not committed (rerun the extract command "
                                                     "to finish it)); see `dfprep verify`")


def test_a_damaged_videos_index_is_reported_in_one_line_and_rebuilt_by_a_rerun(copy, folder_dataset):
    videos = copy / "videos.parquet"
    videos.write_bytes(videos.read_bytes()[:100])
    result = CliRunner().invoke(cli, ["verify", str(copy), "--quiet"])
    assert result.exit_code == 1 and result.output.startswith("damaged: videos.parquet is unreadable (")
    stats = CliRunner().invoke(cli, ["stats", str(copy)])
    assert stats.exit_code == 2 and len(stats.output.strip().splitlines()) == 1
    assert "videos.parquet is unreadable" in stats.output and "Traceback" not in stats.output
    _rerun(folder_dataset, copy)
    assert verify_output(str(copy)).clean


@pytest.mark.parametrize("map_letters", ["abc", "abd", "ab"])
def test_verify_compares_a_map_shard_with_its_face_shard_by_keys(tmp_path, map_letters):
    """verify keeps one digest of keys per face shard (not every sample key): a map shard holding other keys
    than its face shard is still found, and one holding the same keys passes."""
    from dfprep.io.shards import Sample, ShardWriter

    def shard(storage: Storage, letters: str) -> None:
        writer = ShardWriter(storage, "train-000000")
        for letter in letters:
            writer.add(Sample(f"train-000000-{letter}", {"txt": letter.encode(), "json": b"{}"}, {"letter": letter}))
        writer.commit({})

    (tmp_path / "maps" / "prle").mkdir(parents=True)
    shard(Storage(str(tmp_path)), "abc")
    shard(Storage(str(tmp_path / "maps" / "prle")), map_letters)
    problems = [d.line() for d in verify_output(str(tmp_path)).problems if d.shard == "maps/prle/train-000000"]
    assert problems == ([] if map_letters == "abc" else
                        ["maps/prle/train-000000: holds other keys (or another order) than its face shard"])
