"""The README's "Read the output with…" recipes, run on a real output: each glob reaches one kind of file only.

Every recipe whose library is installed runs (webdataset, Ray Data, duckdb, pandas from the test extra; polars
and Hugging Face datasets when present, else skipped with the reason).
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dfprep.cli import cli
from dfprep.io.layout import MAP_INDEXES, MAP_SHARDS, SAMPLE_INDEXES, SAMPLE_SHARDS


@pytest.fixture(scope="module")
def out(folder_dataset, tmp_path_factory) -> Path:
    """An extract (2 frames per video, 2 videos per shard) plus its landmark maps, made with the CLI."""
    out = tmp_path_factory.mktemp("readers") / "out"
    extract = ["extract", "folder", str(folder_dataset), "-o", str(out), "--workers", "0", "--frames", "2",
               "--videos-per-shard", "2", "--quiet"]
    assert CliRunner().invoke(cli, extract).exit_code == 0
    result = CliRunner().invoke(cli, ["maps", str(out), "--workers", "0", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)  # maps --json: the summary alone on stdout
    assert summary["maps_written"] == summary["maps_total"] == len(expected(out)) > 0
    assert summary["output"] == f"{out}/maps/landmarks" and summary["method"] == "landmarks"
    return out


def expected(out: Path) -> dict[str, int]:
    """key → label, from the output's own sample indexes (read one file at a time: no glob involved)."""
    rows = [row for path in sorted(out.glob("*.parquet")) if path.stem not in ("videos", "plan")
            for row in pq.read_table(path, columns=["key", "label"]).to_pylist()]
    return {row["key"]: row["label"] for row in rows}


def test_the_globs_reach_one_kind_of_file_each(out):
    shards, indexes = sorted(glob.glob(f"{out}/{SAMPLE_SHARDS}")), sorted(glob.glob(f"{out}/{SAMPLE_INDEXES}"))
    assert shards and [Path(p).stem for p in shards] == [Path(p).stem for p in indexes]
    assert not any("maps" in p or p.endswith(("videos.parquet", "plan.parquet")) for p in shards + indexes)
    map_shards = sorted(glob.glob(f"{out}/{MAP_SHARDS.format(name='landmarks')}"))
    assert [Path(p).name for p in map_shards] == [Path(p).name for p in shards]
    assert len(glob.glob(f"{out}/{MAP_INDEXES.format(name='landmarks')}")) == len(shards)


def test_plain_webdataset_and_the_maps_join_by_key(out):
    wds = pytest.importorskip("webdataset")
    faces = wds.WebDataset(sorted(glob.glob(f"{out}/*.tar")), shardshuffle=False).decode("rgb")
    maps = wds.WebDataset(sorted(glob.glob(f"{out}/maps/landmarks/*.tar")), shardshuffle=False).decode("l")
    joined = [(face, prmap) for face, prmap in zip(faces, maps)]
    assert all(face["__key__"] == prmap["__key__"] for face, prmap in joined)
    assert {face["__key__"]: face["json"]["label"] for face, _ in joined} == expected(out)
    face, prmap = joined[0]
    assert face["jpg"].shape[2] == 3 and prmap["prmap.png"].shape == face["jpg"].shape[:2]
    assert face["ldm.npy"].dtype == np.float32 and face["ldm.npy"].shape[1] == 2


def test_every_sample_json_has_the_same_fields_pair_key_empty_for_reals(out):
    wds = pytest.importorskip("webdataset")
    metas = [json.loads(s["json"]) for s in wds.WebDataset(sorted(glob.glob(f"{out}/*.tar")), shardshuffle=False)]
    assert len({tuple(sorted(meta)) for meta in metas}) == 1  # one schema for every reader to infer
    assert all(meta["pair_key"] == "" for meta in metas if meta["label"] == 0)
    rows = pq.read_table(sorted(out.glob("train-*.parquet"))[0]).to_pylist()
    assert all(row["pair_key"] is None for row in rows if row["label"] == 0)  # the index: a typed null


def test_webloader_batches(out):
    wds = pytest.importorskip("webdataset")
    pipeline = (wds.WebDataset(sorted(glob.glob(f"{out}/*.tar")), shardshuffle=False)
                .decode("rgb").to_tuple("__key__", "jpg", "json").batched(4))
    batches = list(wds.WebLoader(pipeline, batch_size=None, num_workers=0))
    keys = [key for batch in batches for key in batch[0]]
    assert sorted(keys) == sorted(expected(out)) and len(keys) == len(set(keys))
    assert batches[0][1].shape[0] == min(4, len(keys))


def _ray_read(out: Path, ray_session):
    """Ray Data datasets of the face shards and the landmark map shards (the README's globs)."""
    pytest.importorskip("pandas", reason="Ray Data needs pandas (in the test extra)")
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    return (ray.data.read_webdataset(sorted(glob.glob(f"{out}/*.tar"))),
            ray.data.read_webdataset(sorted(glob.glob(f"{out}/maps/landmarks/*.tar"))))


def test_ray_data_reads_the_shards_and_zips_the_maps_in_order(out, ray_session):
    faces, maps = _ray_read(out, ray_session)
    rows = faces.zip(maps).take_all()  # the maps' columns come back suffixed (__key___1, …)
    assert sorted(row["__key__"] for row in rows) == sorted(expected(out))
    assert all(row["__key__"] == row["__key___1"] for row in rows)
    assert all(row["prmap.png"].shape[:2] == row["jpg"].shape[:2] for row in rows)


def test_ray_data_joins_the_maps_on_the_key(out, ray_session):
    pytest.importorskip("polars", reason="Ray Data's join needs polars, not in the test extra (checked by hand)")
    faces, maps = _ray_read(out, ray_session)
    joined = faces.join(maps.select_columns(["__key__", "prmap.png"]), join_type="inner", num_partitions=2,
                        on=("__key__",)).take_all()
    assert sorted(row["__key__"] for row in joined) == sorted(expected(out))
    assert all(row["prmap.png"].shape[:2] == row["jpg"].shape[:2] for row in joined)


def test_duckdb_on_the_sample_indexes_and_the_videos_table(out):
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(f"SELECT key, label FROM '{out}/{SAMPLE_INDEXES}'").fetchall()
    assert dict(rows) == expected(out)
    by_status = dict(duckdb.sql(f"SELECT status, count(*) FROM '{out}/videos.parquet' GROUP BY status").fetchall())
    assert sum(by_status.values()) == 8 and by_status["ok"] == 6


def test_pandas_and_pyarrow_on_the_sample_indexes(out):
    pandas = pytest.importorskip("pandas")
    import pyarrow.dataset as ds

    frame = pandas.concat([pandas.read_parquet(path) for path in sorted(glob.glob(f"{out}/{SAMPLE_INDEXES}"))])
    assert dict(zip(frame["key"], frame["label"])) == expected(out)
    table = ds.dataset(sorted(glob.glob(f"{out}/{SAMPLE_INDEXES}")), format="parquet").to_table()
    assert table.num_rows == len(expected(out)) and "pair_key" in table.column_names


def test_polars_on_the_sample_indexes(out):
    polars = pytest.importorskip("polars", reason="polars is not in the test extra (README recipe checked by hand)")
    frame = polars.read_parquet(f"{out}/{SAMPLE_INDEXES}")
    assert dict(zip(frame["key"], frame["label"])) == expected(out)


def test_hugging_face_datasets_keeps_pair_key(out, tmp_path):
    datasets = pytest.importorskip("datasets", reason="HF datasets is not in the test extra (checked by hand)")
    data = datasets.load_dataset("webdataset", data_files={"all": f"{out}/*.tar"}, split="all",
                                 cache_dir=str(tmp_path / "hf"))
    assert sorted(data["__key__"]) == sorted(expected(out))
    assert "pair_key" in data.features["json"]
