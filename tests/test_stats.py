"""dfprep stats: every number matches what the shards and videos.parquet hold, counted independently here."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dfprep.catalog import scan
from dfprep.cli import cli
from dfprep.config import load_config
from dfprep.errors import DfprepError
from dfprep.inspect.stats import compute_stats, format_stats
from dfprep.runner.run import extract_run
from tests.helpers.synthetic import FacePlacement, linear_motion, write_clip


def _face(index: int):
    return linear_motion(FacePlacement(10 + 15 * index, 10, 0.7), FacePlacement(90, 40, 0.75))


def _first_half_only(index: int):
    moving = _face(index)
    return lambda i, n: moving(i, n) if i < n // 2 else []


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Path:
    """A real extraction over two splits with ok, partial, no_face and unsupported videos."""
    root = tmp_path_factory.mktemp("stats_videos")
    clips = {"train/real/a": _face(0), "train/real/b": _face(1), "train/real/empty": lambda i, n: [],
             "train/fake/a": _face(2), "train/fake/half": _first_half_only(0), "test/real/a": _face(1),
             "test/fake/a": _face(2)}
    for name, places in clips.items():
        write_clip(root / f"{name}.mp4", 320, 240, 16, places, gop=8, seed=len(name))
    (root / "test" / "fake" / "broken.mp4").write_text("not a video at all")
    config = load_config(None, {"sampling.frames": 4, "sampling.neighbour_retry": 0,
                                "output.videos_per_shard": 2, "ray.workers": 0})
    out = tmp_path_factory.mktemp("stats_out") / "out"
    extract_run(scan("folder", root, config.dataset), config, str(out), quiet=True)
    return out


def _samples_in_tars(out: Path) -> list[dict]:
    """Every sample's json member, read straight from the committed tars."""
    samples = []
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            samples += [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    return samples


def _videos(out: Path) -> list[dict]:
    return pq.read_table(out / "videos.parquet").to_pylist()


def test_fixture_covers_every_outcome(extracted):
    assert Counter(v["status"] for v in _videos(extracted)) == {"ok": 5, "partial": 1, "no_face": 1,
                                                                 "unsupported": 1}


def test_face_counts_match_the_tars(extracted):
    stats = compute_stats(str(extracted))
    samples = _samples_in_tars(extracted)
    by_split_label = Counter((s["split"], "fake" if s["label"] else "real") for s in samples)
    from_groups = Counter()
    for group in stats["videos"]:
        from_groups[(group["split"], group["label"])] += group["faces"]
    assert from_groups == by_split_label
    assert {s["split"]: s["faces"] for s in stats["splits"]} == dict(Counter(s["split"] for s in samples))
    assert stats["totals"]["faces"] == len(samples) == len({s["key"] for s in samples})
    per_video = Counter(s["video_id"] for s in samples)
    histogram = Counter(per_video[v["video_id"]] for v in _videos(extracted))
    assert {b["faces"]: b["videos"] for b in stats["frames_per_video"]} == dict(histogram)


def test_video_counts_and_yield_match_videos_parquet(extracted):
    stats = compute_stats(str(extracted))
    videos = _videos(extracted)
    expected = Counter((v["dataset"], v["method"], v["split"], "fake" if v["label"] else "real") for v in videos)
    assert {(g["dataset"], g["method"], g["split"], g["label"]): g["videos"] for g in stats["videos"]} == expected
    for method in stats["yield_by_method"]:
        rows = [v for v in videos if v["method"] == method["method"]]
        planned, written = sum(v["frames_planned"] for v in rows), sum(v["faces_written"] for v in rows)
        assert (method["videos"], method["planned"], method["faces"]) == (len(rows), planned, written)
        assert method["yield"] == pytest.approx(written / planned, abs=1e-4)
    real = next(m for m in stats["yield_by_method"] if m["method"] == "real")
    assert real["yield"] < 1  # the faceless room planned frames and wrote none
    assert stats["statuses"] == dict(Counter(v["status"] for v in videos))


def test_failures_are_counted_by_normalised_reason(extracted):
    reasons = {(r["status"], r["reason"]): r["videos"] for r in compute_stats(str(extracted))["reasons"]}
    assert reasons[("no_face", "no face found in any of N planned frames (or their neighbours)")] == 1
    assert reasons[("partial", "no face in N of N planned frames (or their neighbours)")] == 1
    assert [n for (status, _), n in reasons.items() if status == "unsupported"] == [1]
    assert sum(reasons.values()) == sum(1 for v in _videos(extracted) if v["error"])


def test_reasons_group_digits_and_paths_and_keep_the_top_20(tmp_path):
    rows = [{"video_id": f"d/m/c/{i}", "status": "decode_error", "error": f"cannot open /data/clips/{i}.mp4: eof",
             "split": "train", "label": 0, "frames_planned": 4, "faces_written": 0, "shard": ""} for i in range(7)]
    rows += [{"video_id": f"d/m/c/x{i}", "status": "unsupported", "error": f"codec {chr(97 + i)}{chr(97 + i)} unknown",
              "split": "train", "label": 1, "frames_planned": 0, "faces_written": 0, "shard": ""} for i in range(25)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "videos.parquet")
    reasons = compute_stats(str(tmp_path))["reasons"]
    assert len(reasons) == 20
    assert reasons[0] == {"status": "decode_error", "reason": "cannot open <path>: eof", "videos": 7}


def test_disk_shards_config_and_completeness(extracted):
    stats = compute_stats(str(extracted))
    dataset = json.loads((extracted / "dataset.json").read_text())
    tars = sorted(extracted.glob("*.tar"))
    disk = Counter()
    for tar_path in tars:
        disk[tar_path.name.split("-")[0]] += os.path.getsize(tar_path)
    assert {s["split"]: s["disk_bytes"] for s in stats["splits"]} == dict(disk)
    assert {s["split"]: s["shards"] for s in stats["splits"]} == dict(Counter(t.name.split("-")[0] for t in tars))
    assert stats["config_hash"] == dataset["config_hash"] and stats["versions"] == dataset["versions"]
    assert stats["shards"]["planned"] == stats["shards"]["committed"] == len(list(extracted.glob("*_stats.json")))
    assert stats["shards"]["complete"] is True


def test_a_missing_commit_marker_makes_it_incomplete(extracted, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(extracted, copy)
    next(copy.glob("*_stats.json")).unlink()
    shards = compute_stats(str(copy))["shards"]
    assert shards["complete"] is False and shards["committed"] == shards["planned"] - 1


def test_never_reads_the_tars_and_works_through_uris(extracted, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(extracted, copy)
    for tar_path in copy.glob("*.tar"):
        tar_path.write_bytes(b"\xff" * tar_path.stat().st_size)  # same size, unreadable as a tar
    original = compute_stats(str(extracted))
    for other in (compute_stats(str(copy)), compute_stats(f"file://{copy}")):
        assert {k: v for k, v in other.items() if k != "output"} == {k: v for k, v in original.items() if k != "output"}


def test_not_an_output_is_a_one_line_error(tmp_path):
    with pytest.raises(DfprepError, match="not a dfprep output"):
        compute_stats(str(tmp_path))
    with pytest.raises(DfprepError, match="no such output folder"):
        compute_stats(str(tmp_path / "absent"))


def _section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(title) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return lines[start:end]


def test_text_report_is_aligned(extracted):
    text = format_stats(compute_stats(str(extracted)))
    statuses = _section(text, "Statuses")
    assert statuses[0].split() == ["status", "videos", "share"] and len(statuses) == 5
    assert len({len(line) for line in statuses}) == 1  # numbers right-aligned to one column edge
    assert any(line.split()[:2] == ["partial", "1"] for line in statuses)
    histogram = _section(text, "Faces per video")
    assert [line.split()[0] for line in histogram] == ["0", "2", "4"]
    bars = {line.split()[0]: line.split()[-1] for line in histogram}
    assert len(bars["4"]) == 40 and set(bars["4"]) == {"#"}
    assert "complete:  yes" in text


def test_cli_json_parses_and_text_prints(extracted):
    runner = CliRunner()
    as_json = runner.invoke(cli, ["stats", str(extracted), "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == json.loads(json.dumps(compute_stats(str(extracted))))
    text = runner.invoke(cli, ["stats", str(extracted)])
    assert text.exit_code == 0 and "Failure reasons (top 20)" in text.output
    missing = runner.invoke(cli, ["stats", str(extracted / "nope")])
    assert missing.exit_code == 2 and "no such output folder" in missing.output


def test_a_large_output_is_counted_a_row_group_at_a_time(tmp_path):
    """60,000 videos: every count equals Arrow's own group-by over videos.parquet, and the report never holds the
    rows (tracemalloc peak under 4 MB; one dict per video, as before, took ~60 MB)."""
    import tracemalloc

    videos = 60_000
    methods = ["real", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
    table = pa.table({
        "video_id": [f"ffpp/{methods[n % 5]}/c23/{n:06d}" for n in range(videos)],
        "dataset": ["ffpp"] * videos, "method": [methods[n % 5] for n in range(videos)],
        "split": [("train", "val", "test")[n % 3] for n in range(videos)], "label": [int(n % 5 > 0) for n in range(videos)],
        "status": ["ok" if n % 11 else "no_face" for n in range(videos)],
        "error": ["" if n % 11 else f"no face found in any of {n % 7 + 1} planned frames" for n in range(videos)],
        "frames_planned": [8] * videos, "faces_written": [0 if n % 11 == 0 else n % 9 for n in range(videos)],
        "shard": [f"train-{n // 48:06d}" for n in range(videos)]})
    pq.write_table(table, tmp_path / "videos.parquet", row_group_size=1024)
    compute_stats(str(tmp_path))  # modules and caches warmed: not the report's own memory
    tracemalloc.start()
    try:
        stats = compute_stats(str(tmp_path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"peak {peak / 1e6:.1f} MB")
    assert peak < 4_000_000, f"peak {peak / 1e6:.1f} MB"
    groups = table.group_by(["method", "split", "label"]).aggregate(
        [("video_id", "count"), ("frames_planned", "sum"), ("faces_written", "sum")]).to_pylist()
    assert {(g["method"], g["split"], g["label"]): (g["videos"], g["planned"], g["faces"]) for g in stats["videos"]} == {
        (g["method"], g["split"], "fake" if g["label"] else "real"):
        (g["video_id_count"], g["frames_planned_sum"], g["faces_written_sum"]) for g in groups}
    assert stats["totals"]["videos"] == videos and stats["statuses"] == {"ok": 54_545, "no_face": 5_455}
    assert stats["reasons"] == [{"status": "no_face", "reason": "no face found in any of N planned frames",
                                 "videos": 5_455}]
    histogram = Counter(table.column("faces_written").to_pylist())
    assert {b["faces"]: b["videos"] for b in stats["frames_per_video"]} == dict(histogram)


def test_without_videos_parquet_the_rows_come_from_the_commit_markers(extracted, tmp_path):
    """An interrupted first run has no videos.parquet yet: stats counts the markers' rows, one marker at a time,
    and gives the same numbers."""
    copy = tmp_path / "out"
    shutil.copytree(extracted, copy)
    (copy / "videos.parquet").unlink()
    original, from_markers = compute_stats(str(extracted)), compute_stats(str(copy))
    for section in ("totals", "videos", "yield_by_method", "statuses", "reasons", "frames_per_video", "splits"):
        assert from_markers[section] == original[section], section
    assert from_markers["totals"]["videos"] == len(_videos(extracted)) > 0
