"""An output filesystem that fails writes, or fills up: a clear error, nothing partial visible, rerun completes."""

from __future__ import annotations

import errno
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from dfprep.catalog import scan
from dfprep.config import load_config
from dfprep.errors import DfprepError
from dfprep.run import extract_run


class _BudgetedStream:
    """A file-like writer that raises ENOSPC once the filesystem's byte budget is spent."""

    def __init__(self, inner, handler: "FaultyHandler"):
        self.inner, self.handler, self.closed = inner, handler, False

    def write(self, data) -> int:
        self.handler.spend(len(data))
        return self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.closed = True
        self.inner.close()


class FaultyHandler(pafs.FileSystemHandler):
    """Local filesystem with injected faults: a byte budget (full disk) or failing opens after N files."""

    def __init__(self, byte_budget: float = float("inf"), fail_opens_after: float = float("inf")):
        self.local = pafs.LocalFileSystem()
        self.budget, self.opens_left = byte_budget, fail_opens_after

    def spend(self, size: int) -> None:
        if size > self.budget:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget -= size

    def open_output_stream(self, path, metadata):
        if self.opens_left <= 0:
            raise OSError(errno.EIO, f"Input/output error writing {path}")
        self.opens_left -= 1
        return pa.PythonFile(_BudgetedStream(self.local.open_output_stream(path), self), mode="w")

    def copy_file(self, src, dest):
        self.spend(self.local.get_file_info(src).size or 0)
        self.local.copy_file(src, dest)

    def get_type_name(self): return "faulty"
    def normalize_path(self, path): return path
    def equals(self, other): return self is other
    def get_file_info(self, paths): return self.local.get_file_info(paths)
    def get_file_info_selector(self, selector): return self.local.get_file_info(selector)
    def create_dir(self, path, recursive): self.local.create_dir(path, recursive=recursive)
    def delete_dir(self, path): self.local.delete_dir(path)
    def delete_dir_contents(self, path, missing_dir_ok=False): self.local.delete_dir_contents(path, missing_dir_ok)
    def delete_root_dir_contents(self): raise OSError("refusing to empty the root")
    def delete_file(self, path): self.local.delete_file(path)
    def move(self, src, dest): self.local.move(src, dest)
    def open_input_stream(self, path): return self.local.open_input_stream(path)
    def open_input_file(self, path): return self.local.open_input_file(path)
    def open_append_stream(self, path, metadata): raise OSError("append not supported")


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


@pytest.mark.parametrize("fault", [{"byte_budget": 150_000}, {"fail_opens_after": 9}])
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
