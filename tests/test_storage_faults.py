"""An output filesystem that fails writes, or fills up: a clear error, nothing partial visible, rerun completes."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from dfprep.catalog import scan
from dfprep.config import load_config
from dfprep.errors import DfprepError
from dfprep.runner.run import extract_run
from tests.helpers.faulty_fs import FaultyHandler


def _config():
    return load_config(None, {"sampling.frames": 3, "output.videos_per_shard": 2, "ray.workers": 0})


def _extract(dataset: Path, out: Path, handler: FaultyHandler | None):
    filesystem = pafs.PyFileSystem(handler) if handler else None
    return extract_run(scan("folder", dataset), _config(), str(out), quiet=True, filesystem=filesystem)


def _assert_nothing_partial_is_visible(out: Path) -> None:
    """Every tar under a final name is complete (readable to its end) and has its index and marker."""
    for tar_path in out.glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            names = tar.getnames()
        stats = tar_path.with_name(tar_path.stem + "_stats.json")
        if stats.exists():
            keys = pq.read_table(tar_path.with_suffix(".parquet")).column("key").to_pylist()
            assert {n.split(".")[0] for n in names} == set(keys)


# byte_budget: the run writes ~476 kB; 250 kB runs out after the first (costliest) shard committed, before the second
@pytest.mark.parametrize("fault", [{"byte_budget": 250_000}, {"fail_opens_after": 9}])
def test_write_faults_stop_cleanly_and_a_rerun_completes(folder_dataset, tmp_path, fault):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DfprepError, match="writing to .* failed .*rerun the same command"):
        _extract(folder_dataset, out, FaultyHandler(**fault))
    _assert_nothing_partial_is_visible(out)
    committed_before = {p.name for p in out.glob("*_stats.json")}
    assert len(committed_before) >= 1, "the fault should strike after a first shard committed"
    report = _extract(folder_dataset, out, None)
    assert report.units_skipped == len(committed_before)
    rows = pq.read_table(out / "videos.parquet").to_pylist()
    assert len(rows) == len({r["video_id"] for r in rows}) == 8
    keys = [k for p in out.glob("*-0*.parquet") for k in pq.read_table(p).column("key").to_pylist()]
    assert len(keys) == len(set(keys)) == sum(r["faces_written"] for r in rows) == 18
    assert not list(out.glob("*.tmp"))
