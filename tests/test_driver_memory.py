"""The driver's memory does not grow with the videos: the plan's rows wait in a local file, units are built as
they are handed out, commit markers are cut to a few keys, and videos.parquet is streamed a row group at a time
from the markers."""

import os

import pyarrow as pa
import pyarrow.parquet as pq

from dfprep.catalog.base import VideoRecord
from dfprep.config import load_config
from dfprep.io.storage import Storage


def test_the_driver_keeps_no_python_object_per_video(tmp_path):
    """20,000 planned videos wait in the plan's local file: the Python heap grows by less than 0.05 kB per video
    (a list of records took ~0.4 kB each), Arrow holds under 5 B per video (the plan table in memory: ~200 B), and
    only the units handed out are built as records."""
    import tracemalloc

    from dfprep.jobs.extract_shards import ExtractJob

    def catalog(videos: int = 20_000):
        for n in range(videos):
            video_id = f"folder/{'real' if n % 2 else 'fake'}/raw/v{n:05d}"
            yield VideoRecord(video_id, f"/data/videos/{n % 7}/v{n:05d}.mp4", "folder", "real", "raw", "train",
                              n % 2, video_id)

    config = load_config(None, {})
    ExtractJob(Storage(str(tmp_path / "warm")), catalog(100), config, overwrite=False, extend=False,
               runtime_versions={}).plan(2)  # the modules a plan imports are not the plan's memory
    tracemalloc.start()
    try:
        before, arrow_before = tracemalloc.get_traced_memory()[0], pa.total_allocated_bytes()
        job = ExtractJob(Storage(str(tmp_path / "out")), catalog(), config, overwrite=False, extend=False,
                         runtime_versions={})
        plan = job.plan(2)
        held = tracemalloc.get_traced_memory()[0] - before
        arrow = pa.total_allocated_bytes() - arrow_before
    finally:
        tracemalloc.stop()
    assert len(plan.units) == 417 and sum(job.size(u) for u in plan.units) == 20_000
    print(f"{held / 20_000:.1f} B per video on the Python heap, {arrow / 20_000:.1f} B in Arrow buffers")
    assert held < 20_000 * 50, f"{held / 20_000:.0f} B per video on the Python heap"
    assert arrow < 20_000 * 5, f"{arrow / 20_000:.0f} B per video in Arrow buffers"  # the rows are on disk
    spill = os.readlink(f"/proc/self/fd/{job.rows._spill.fileno()}")  # in the output folder, with no name
    assert spill.startswith(str(tmp_path / "out")) and spill.endswith(" (deleted)"), spill
    assert not [name for name in os.listdir(tmp_path / "out") if "plan-" in name]
    unit = job.load(plan.units[3])
    assert len(unit.records) == 48 and unit.records[0].video_id == "folder/fake/raw/v00288"  # fakes sort first



def test_the_command_lets_go_of_its_catalog_once_the_plan_is_made(tmp_path, monkeypatch):
    """`dfprep extract` builds the catalog, hands it to the job and keeps no reference: when the units are handed
    out, no Arrow buffer of the catalog is left (the command's own variable held ~170 B per video for the whole
    run: 3.4 MB at 20,000 videos)."""
    from click.testing import CliRunner

    from dfprep.cli import cli
    from dfprep.runner import run

    root = tmp_path / "videos"
    for n in range(5_000):
        folder = root / ("real" if n % 2 else "fake") / f"{n % 50:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"clip_{n:05d}_with_a_long_name.mp4").touch()
    seen: dict[str, int] = {}

    def dispatch(job, units, *args, **kwargs):
        seen["arrow"], seen["units"] = pa.total_allocated_bytes(), len(units)
        raise KeyboardInterrupt  # stop here: the units are planned and about to go out

    before = pa.total_allocated_bytes()
    monkeypatch.setattr(run, "run_in_process", dispatch)
    result = CliRunner().invoke(cli, ["extract", "folder", str(root), "-o", str(tmp_path / "out"), "--workers", "0",
                                      "--quiet"])
    assert seen["units"] == 105, result.output  # 5,000 videos in units of at most 48
    held = seen["arrow"] - before
    assert held < 5_000 * 5, f"{held / 5_000:.0f} B per video of Arrow buffers held while the units run"


def test_videos_parquet_is_written_a_row_group_at_a_time_and_holds_every_row_in_plan_order():
    from dfprep.jobs.extract_shards import ROWS_PER_GROUP, rows_to_table, videos_parquet
    from dfprep.io.layout import videos_schema

    def row(n: int) -> dict:
        record = VideoRecord(f"d/real/raw/v{n:05d}", f"/v/{n}.mp4", "d", "real", "raw", "train", 0,
                             f"d/real/raw/v{n:05d}")
        return {**record.to_row(), "frames_planned": 4, "faces_written": n % 5, "faces_cnn": 0, "plan": "uniform",
                "frame_count": 100, "fps": 25.0, "shard": f"train-{n // 48:06d}", **({"pair": "x"} if n == 7 else {})}

    markers = [{"videos": [row(n) for n in range(start, min(start + 48, 5000))]} for start in range(0, 5000, 48)]
    every = [r for m in markers for r in m["videos"]]
    schema = videos_schema({key for r in every for key in r})
    sink = pa.BufferOutputStream()
    videos_parquet(sink, iter(markers), schema)
    written = sink.getvalue()
    table = pq.read_table(pa.BufferReader(written))
    assert table.equals(rows_to_table(every))  # same rows, same order, `pair` kept (one row has it)
    groups = pq.ParquetFile(pa.BufferReader(written)).metadata
    sizes = [groups.row_group(i).num_rows for i in range(groups.num_row_groups)]
    assert sum(sizes) == 5000 and len(sizes) > 1 and all(ROWS_PER_GROUP <= n < ROWS_PER_GROUP + 48 for n in sizes[:-1])


def test_a_catalog_table_is_taken_as_it_is_and_any_other_table_is_put_in_family_order():
    import random

    from dfprep.catalog.table import CATALOG_SCHEMA, catalog_table, family_ordered

    def key(record):
        return record.split, record.family_id, record.label, record.video_id

    rng = random.Random(3)
    for _ in range(300):
        records = [VideoRecord(f"v{rng.randint(0, 3)}", "p", "d", "m", "c", rng.choice(["train", "val"]),
                               rng.randint(0, 1), f"f{rng.randint(0, 2)}") for _ in range(rng.randint(1, 5))]
        table = pa.Table.from_pylist([r.to_row() for r in records], schema=CATALOG_SCHEMA)
        assert family_ordered(table) == ([key(r) for r in records] == sorted(key(r) for r in records))
        ordered = catalog_table(table)
        assert [key(VideoRecord(**row)) for row in ordered.to_pylist()] == sorted(key(r) for r in records)
    catalog = catalog_table(VideoRecord(f"d/real/raw/{n}", f"/v/{n}.mp4", "d", "real", "raw", "train", 0,
                                        f"d/real/raw/{n}") for n in range(50))
    again = catalog_table(catalog)  # what the command hands the job: its columns are not copied
    assert again.column("path").chunk(0).buffers()[2].address == catalog.column("path").chunk(0).buffers()[2].address



def test_the_runner_keeps_only_the_marker_keys_a_job_declares(tmp_path):
    """Commit markers are cut as they are read: the run holds a few numbers per unit, not its per-video rows,
    timings and checksums; a key nobody declared raises rather than reading as absent."""
    import json

    import pytest

    from dfprep.io.integrity import MARKER_CHECK_KEYS
    from dfprep.io.shards import committed_units
    from dfprep.jobs.extract_shards import ExtractJob

    marker = {"unit": "train-000000", "tar": "train-000000.tar", "tar_bytes": 10, "parquet_bytes": 5, "samples": 2,
              "config_hash": "abc", "timings": {"decode": 1.0}, "tar_sha256": "0" * 64,
              "videos": [{"video_id": f"v{n}", "status": "ok"} for n in range(48)]}
    (tmp_path / "train-000000_stats.json").write_text(json.dumps(marker))
    kept = committed_units(Storage(str(tmp_path)), keep=MARKER_CHECK_KEYS | ExtractJob.marker_keys)["train-000000"]
    assert dict(kept) == {"tar": "train-000000.tar", "tar_bytes": 10, "parquet_bytes": 5, "samples": 2,
                          "config_hash": "abc"}
    assert "videos" not in kept and kept.get("samples") == 2
    with pytest.raises(KeyError, match="declare it in the job's marker_keys"):
        kept.get("timings", {})
    assert committed_units(Storage(str(tmp_path)))["train-000000"] == marker  # without `keep`: all of it
