"""The folder adapter takes every common FFmpeg container (.ts, .mpg, raw .h264, …) and reports the files it skips."""

from __future__ import annotations

import pyarrow.parquet as pq
from click.testing import CliRunner

from dfprep.cli import cli
from tests.helpers.synthetic import FacePlacement, linear_motion, write_clip


def test_extract_takes_ts_mpg_h264_and_counts_skipped_files_in_its_summary(tmp_path):
    root = tmp_path / "root"
    motion = linear_motion(FacePlacement(10, 10, 0.8), FacePlacement(60, 40, 0.85))
    for name in ("a.ts", "b.mpg", "c.h264"):
        write_clip(root / "real" / name, 320, 240, 8, motion, gop=4)
    (root / "fake").mkdir()
    (root / "fake" / "readme.txt").write_text("not a video")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["extract", "folder", str(root), "-o", str(out), "--workers", "0",
                                      "--frames", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "videos.parquet").to_pylist()
    assert sorted((r["video_id"], r["status"], r["faces_written"]) for r in rows) == [
        ("folder/real/raw/a", "ok", 2), ("folder/real/raw/b", "ok", 2), ("folder/real/raw/c", "ok", 2)]
    assert "catalog warning: folder: skipped 1 file(s) whose extension is not a video extension (.txt 1)" \
        in result.output
