"""Integration on the real FF++ sample: 32 aligned faces per video, pairs line up, train + evaluate run."""

from __future__ import annotations

import json
import tarfile

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dfprep.catalog import scan
from dfprep.cli import cli
from dfprep.config import load_config
from dfprep.runner.run import extract_run


@pytest.fixture(scope="module")
def ffpp_shards(ffpp_mini, tmp_path_factory):
    out = tmp_path_factory.mktemp("ffpp_shards")
    config = load_config("prle-landmarks-ffpp", {"ray.workers": 0})
    report = extract_run(scan("ffpp", ffpp_mini, config.dataset), config, str(out), quiet=True)
    return out, report


def test_ffpp_mini_gives_32_faces_per_video(ffpp_shards):
    out, report = ffpp_shards
    assert report.faces == 224 and report.statuses == {"ok": 7}
    videos = {r["video_id"]: r for r in pq.read_table(out / "videos.parquet").to_pylist()}
    assert all(v["faces_written"] == 32 and v["frames_planned"] == 32 for v in videos.values())
    assert videos["ffpp/Deepfakes/c23/519_515"]["plan"] == "paired"
    assert videos["ffpp/Face2Face/c23/750_743"]["plan"] == "own: original video absent"
    with tarfile.open(out / "train-000000.tar") as tar:
        metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    fake_frames = {m["frame"] for m in metas if m["video_id"] == "ffpp/Deepfakes/c23/519_515"}
    real_frames = {m["frame"] for m in metas if m["video_id"] == "ffpp/youtube/c23/519"}
    assert fake_frames == real_frames and len(fake_frames) == 32  # CADDM-style pairs line up
    pairs = {m["pair_key"] for m in metas if m.get("pair_key") and m["video_id"].endswith("519_515")}
    assert pairs <= {m["key"] for m in metas}
    assert len(report.maps) == 1 and "224" in report.maps[0]  # the prle-landmarks recipe adds landmark maps


def test_train_and_evaluate_on_ffpp_mini(ffpp_shards, tmp_path):
    out, _ = ffpp_shards
    pytest.importorskip("torch")
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", str(out), "-o", str(run), "--model", "tiny_cnn", "--epochs", "1",
                                      "--batch-size", "16", "--workers", "0", "--region-erasing", "--maps",
                                      "landmarks", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["evaluate", str(run / "model.pt"), str(out), "--json", str(run / "e.json")])
    assert result.exit_code == 0, result.output
    assert "frame_auc" in result.output and "video_auc" in result.output
    rows = json.loads((run / "e.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert rows[0]["frames"] == 64 and rows[0]["videos"] == 2 and 0 <= rows[0]["frame_auc"] <= 1
