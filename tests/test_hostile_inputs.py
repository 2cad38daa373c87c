"""Hostile inputs, generated at test time: the run completes, exit 0, every file has a row and a reason."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dfprep.cli import cli
from tests.helpers.synthetic import FacePlacement, linear_motion, render_frame, write_clip

FACE = linear_motion(FacePlacement(30, 20, 0.9), FacePlacement(60, 40, 0.9))


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(10):
            samples = np.zeros((1, 1024), np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _variable_frame_rate(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for index in range(20):
            frame = av.VideoFrame.from_ndarray(render_frame(320, 240, FACE(index, 20)), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += 20 if index % 2 else 70  # alternating 50 fps and ~14 fps
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory) -> Path:
    """A folder dataset full of trouble, plus one good clip to prove the run still works."""
    root = tmp_path_factory.mktemp("hostile")
    real, fake = root / "real", root / "fake"
    good = write_clip(real / "good.mp4", 320, 240, 10, FACE, gop=5)
    (real / "zero_bytes.mp4").write_bytes(b"")
    (real / "plain_text.mp4").write_text("definitely not a video\n")
    data = good.read_bytes()
    (fake / "truncated.mp4").parent.mkdir(parents=True, exist_ok=True)
    (fake / "truncated.mp4").write_bytes(data[: len(data) // 3])
    _audio_only(fake / "audio_only.mp4")
    write_clip(fake / "one_frame.mp4", 320, 240, 1, FACE)
    write_clip(fake / "noise_no_face.mp4", 320, 240, 8, None, frame_filter=lambda i, f: np.random.default_rng(i)
               .integers(0, 255, f.shape, dtype=np.uint8))
    write_clip(fake / "uhd_2160p.mp4", 3840, 2160, 3, linear_motion(FacePlacement(900, 500, 3.0),
                                                                     FacePlacement(1200, 700, 3.0)), crf=35)
    write_clip(fake / "portrait.mp4", 320, 240, 6, FACE, rotation=90, store_turned=True)
    _variable_frame_rate(fake / "variable_rate.mp4")
    write_clip(real / "spaces and ünïcode ✓.mp4", 320, 240, 6, FACE)
    os.symlink(root, real / "loop")  # a symlink loop back to the dataset root
    (fake / "a_directory.mp4").mkdir()
    return root


@pytest.fixture(scope="module")
def hostile_run(hostile_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile_out")
    result = CliRunner().invoke(cli, ["extract", "folder", str(hostile_root), "-o", str(out), "--workers", "0",
                                      "--frames", "4", "--quiet", "--set", "sampling.video_timeout_s=60"])
    rows = {Path(r["path"]).name: r for r in pq.read_table(out / "videos.parquet").to_pylist()}
    return result, rows, out


def test_the_run_completes_with_exit_code_zero(hostile_run):
    result, rows, _ = hostile_run
    assert result.exit_code == 0, result.output
    assert "a_directory.mp4" not in rows  # a directory is not a video file
    assert len(rows) == 11 and all(r["error"].count("\n") == 0 for r in rows.values())
    assert f"videos: {len(rows)}" in result.output


@pytest.mark.parametrize("name, statuses", [
    ("good.mp4", {"ok"}),
    ("zero_bytes.mp4", {"unsupported", "decode_error"}),
    ("plain_text.mp4", {"unsupported"}),
    ("truncated.mp4", {"decode_error", "partial", "ok"}),
    ("audio_only.mp4", {"unsupported"}),
    ("one_frame.mp4", {"ok"}),
    ("noise_no_face.mp4", {"no_face"}),
    ("uhd_2160p.mp4", {"ok"}),
    ("portrait.mp4", {"ok"}),
    ("variable_rate.mp4", {"ok"}),
    ("spaces and ünïcode ✓.mp4", {"ok"}),
])
def test_each_hostile_input_gets_the_right_status(hostile_run, name, statuses):
    _, rows, _ = hostile_run
    row = rows[name]
    assert row["status"] in statuses, (row["status"], row["error"])
    assert (row["status"] == "ok") == (row["error"] == "")


def test_one_frame_video_gives_one_face_and_truncated_keeps_what_decoded(hostile_run):
    _, rows, _ = hostile_run
    assert rows["one_frame.mp4"]["frames_planned"] == 1 and rows["one_frame.mp4"]["faces_written"] == 1
    assert rows["audio_only.mp4"]["error"] == "no video stream"


def test_keys_from_odd_names_stay_inside_the_output(hostile_run):
    _, rows, out = hostile_run
    keys = [k for p in out.glob("*.parquet") if p.name not in ("videos.parquet", "plan.parquet")
            for k in pq.read_table(p).column("key").to_pylist()]
    assert keys and all("/" not in k and "." not in k and ".." not in k for k in keys)
    assert any("spaces_and" in k for k in keys)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == []


def test_dfdc_metadata_with_invalid_json_and_absent_files(tmp_path):
    part = tmp_path / "dfdc" / "dfdc_train_part_0"
    part.mkdir(parents=True)
    write_clip(part / "present.mp4", 320, 240, 6, FACE)
    (part / "metadata.json").write_text(json.dumps({
        "present.mp4": {"label": "REAL", "split": "train", "original": None},
        "absent.mp4": {"label": "FAKE", "split": "train", "original": "present.mp4"}}))
    broken = tmp_path / "dfdc" / "dfdc_train_part_1"
    broken.mkdir()
    (broken / "metadata.json").write_text("{not json")
    result = CliRunner().invoke(cli, ["extract", "dfdc", str(tmp_path / "dfdc"), "-o", str(tmp_path / "out"),
                                      "--workers", "0", "--frames", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "catalog warning:" in result.output and "part 1 skipped" in result.output
    rows = {r["video_id"]: r for r in pq.read_table(tmp_path / "out/videos.parquet").to_pylist()}
    assert rows["dfdc/original/raw/present"]["status"] == "ok"
    assert rows["dfdc/DFDC/raw/absent"]["status"] == "missing" and rows["dfdc/DFDC/raw/absent"]["error"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_a_row_not_a_crash(tmp_path):
    path = write_clip(tmp_path / "data/real/locked.mp4", 320, 240, 4, FACE)
    path.chmod(0)
    result = CliRunner().invoke(cli, ["extract", "folder", str(tmp_path / "data"), "-o", str(tmp_path / "out"),
                                      "--workers", "0", "--frames", "2", "--quiet"])
    assert result.exit_code == 0
    row = pq.read_table(tmp_path / "out/videos.parquet").to_pylist()[0]
    assert row["status"] in ("unsupported", "decode_error") and "ermission" in row["error"]
