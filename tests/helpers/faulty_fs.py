"""A local pyarrow filesystem with injected faults: a byte budget (a full disk) or failing opens (EIO)."""

from __future__ import annotations

import errno

import pyarrow as pa
import pyarrow.fs as pafs


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
