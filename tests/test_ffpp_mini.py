"""Integration on the real FF++ sample: every video gives 32 aligned faces, fakes paired with originals."""

from __future__ import annotations

import json
import tarfile

import pyarrow.parquet as pq

from dfprep.catalog import scan
from dfprep.config import load_config
from dfprep.run import extract_run


def test_ffpp_mini_gives_32_faces_per_video(ffpp_mini, tmp_path):
    config = load_config("deepfakebench-ffpp", {"ray.workers": 0})
    report = extract_run(scan("ffpp", ffpp_mini, config.dataset), config, str(tmp_path), quiet=True)
    assert report.faces == 224 and report.statuses == {"ok": 7}
    videos = {r["video_id"]: r for r in pq.read_table(tmp_path / "videos.parquet").to_pylist()}
    assert all(v["faces_written"] == 32 and v["frames_planned"] == 32 for v in videos.values())
    assert videos["ffpp/Deepfakes/c23/519_515"]["plan"] == "paired"
    assert videos["ffpp/Face2Face/c23/750_743"]["plan"] == "own: original video absent"
    with tarfile.open(tmp_path / "train-000000.tar") as tar:
        metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    fake_frames = {m["frame"] for m in metas if m["video_id"] == "ffpp/Deepfakes/c23/519_515"}
    real_frames = {m["frame"] for m in metas if m["video_id"] == "ffpp/youtube/c23/519"}
    assert fake_frames == real_frames and len(fake_frames) == 32  # CADDM-style pairs line up
    pairs = {m["pair_key"] for m in metas if m.get("pair_key") and m["video_id"].endswith("519_515")}
    assert pairs <= {m["key"] for m in metas}
