"""The command line: one-line errors with exit code 2, JSON catalog, extract and demo end to end."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
from click.testing import CliRunner

from dfprep.cli import cli

OFFICIAL = {"ffpp/youtube/c23/004": ("val", 0), "ffpp/youtube/c23/519": ("train", 0),
            "ffpp/youtube/c23/634": ("test", 0), "ffpp/Deepfakes/c23/519_515": ("train", 1),
            "ffpp/Face2Face/c23/750_743": ("train", 1), "ffpp/FaceSwap/c23/634_660": ("test", 1),
            "ffpp/NeuralTextures/c23/004_982": ("val", 1)}


def test_datasets_lists_every_adapter_with_its_layout():
    result = CliRunner().invoke(cli, ["datasets"])
    assert result.exit_code == 0
    for name in ("ffpp", "celebdf", "dfdc", "dfdcp", "deeperforensics", "folder"):
        assert f"\n{name} " in "\n" + result.output
    assert "DeepFakeDetection" in result.output and "labels:" in result.output


def test_datasets_json_on_ffpp_mini_has_the_official_splits(ffpp_mini):
    result = CliRunner().invoke(cli, ["datasets", "ffpp", str(ffpp_mini), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    got = {r["video_id"]: (r["split"], r["label"]) for r in payload["records"]}
    assert got == OFFICIAL
    assert payload["counts"]["by_label"] == {"real": 3, "fake": 4}


def test_bad_root_and_bad_config_are_one_line_errors(tmp_path):
    (tmp_path / "random").mkdir()
    result = CliRunner().invoke(cli, ["datasets", "ffpp", str(tmp_path)])
    assert result.exit_code == 2 and "expected" in result.output and "found random/" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(cli, ["extract", "folder", str(tmp_path), "-o", str(tmp_path / "o"),
                                      "--set", "sampling.frames=lots"])
    assert result.exit_code == 2 and "sampling.frames: expected int" in result.output


def test_extract_command_end_to_end(folder_dataset, tmp_path):
    out = tmp_path / "out"
    args = ["extract", "folder", str(folder_dataset), "-o", str(out), "--workers", "0", "--frames", "3", "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "videos: 8   faces written: 18" in result.output and "no_face" in result.output
    assert len(pq.read_table(out / "videos.parquet")) == 8
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "nothing to do" in again.output
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["complete"] and dataset["models"]["dlib68"] and dataset["config"]["sampling"]["frames"] == 3


def test_provenance_the_command_line_in_dataset_json_and_who_made_each_shard(folder_dataset, tmp_path):
    import socket
    import subprocess
    import sys

    from dfprep import __version__

    out = tmp_path / "out"
    args = ["extract", "folder", str(folder_dataset), "-o", str(out), "--workers", "0", "--frames", "2", "--quiet"]
    done = subprocess.run([sys.executable, "-m", "dfprep", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["command"] == "dfprep " + " ".join(args)
    markers = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    host = socket.gethostname()
    assert markers and {m["dfprep_version"] for m in markers} == {__version__}
    assert {m["config_hash"] for m in markers} == {dataset["config_hash"]}
    assert all(m["worker"].startswith(f"{host}:") and m["node"]["host"] == host for m in markers)
    assert f"{host}:{os.getpid()}" not in {m["worker"] for m in markers}  # the dfprep process made them, not pytest


def test_demo_builds_and_extracts(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "demo"), "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "videos: 16   faces written: 128" in result.output and "landmarks maps: 128" in result.output
    assert "6/6 dfprep evaluate" in result.output and (tmp_path / "demo/runs/tiny/model.pt").is_file()
    assert (tmp_path / "demo/sheet.png").stat().st_size > 10_000
    rows = pq.read_table(tmp_path / "demo/shards/videos.parquet").to_pylist()
    assert {r["split"] for r in rows} == {"train", "val", "test"} and {r["label"] for r in rows} == {0, 1}


def test_extract_with_inline_landmark_maps(folder_dataset, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["extract", "folder", str(folder_dataset), "-o", str(out), "--workers", "0",
                                      "--frames", "2", "--quiet", "--maps", "landmarks"])
    assert result.exit_code == 0, result.output
    assert "landmarks maps: 12" in result.output
    face_keys = [k for p in sorted(out.glob("*.parquet")) if "-" in p.stem
                 for k in pq.read_table(p).column("key").to_pylist()]
    map_keys = [k for p in sorted((out / "maps/landmarks").glob("*.parquet"))
                for k in pq.read_table(p).column("key").to_pylist()]
    assert map_keys == face_keys and len(face_keys) == 12
    assert json.loads((out / "maps/landmarks/manifest.json").read_text())["complete"]
