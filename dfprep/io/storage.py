"""The output folder on any pyarrow filesystem: small files written whole (temporary name, then rename)."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dfprep.io.layout import TEMP_SUFFIX

_WHOLE_OBJECT_STORES = {"s3", "gcs"}  # pyarrow filesystems whose uploads become visible only when complete


def resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local path or any `scheme://` URI (s3, gs, hdfs, file)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


class Storage:
    """The output folder on any pyarrow filesystem (local path, file://, s3://, gs://, hdfs://)."""

    def __init__(self, uri: str, filesystem: pafs.FileSystem | None = None):
        # what reports and JSON print: the scheme kept (s3://bucket/out), the query string (options, keys) not
        self.display = uri.partition("?")[0].rstrip("/") if "://" in uri else os.path.abspath(uri)
        if filesystem is None:
            filesystem, uri = resolve_uri(uri)
        self.fs = filesystem
        self.root = uri.rstrip("/") or "/"
        self.is_local = isinstance(filesystem, pafs.LocalFileSystem)

    def path(self, name: str) -> str:
        """Full path of a file inside the output folder; refuses names that would escape it."""
        if name.startswith("/") or "\0" in name or ".." in name.split("/"):
            raise ValueError(f"refusing output name outside the output folder: {name!r}")
        return f"{self.root}/{name}"

    def makedirs(self, name: str = "") -> None:
        """Create the output folder (or a sub-folder)."""
        self.fs.create_dir(self.path(name) if name else self.root, recursive=True)

    def exists(self, name: str) -> bool:
        """Whether a file exists in the output folder."""
        return self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound

    def listdir(self, name: str = "") -> list[str]:
        """Names of the files directly inside the output folder (or a sub-folder)."""
        selector = pafs.FileSelector(self.path(name) if name else self.root, allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File)

    def size(self, name: str) -> int:
        """File size in bytes (0 when absent)."""
        info = self.fs.get_file_info(self.path(name))
        return info.size or 0 if info.type == pafs.FileType.File else 0

    def read_bytes(self, name: str) -> bytes:
        """Whole file contents."""
        with self.fs.open_input_stream(self.path(name)) as stream:
            return stream.read()

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a small file whole: a reader never sees it half-written (see `writing`)."""
        with self.writing(name) as stream:
            stream.write(data)

    @contextmanager
    def writing(self, name: str) -> Iterator[pa.NativeFile]:
        """A stream to write a file through, under a temporary name renamed when the block ends (removed if it
        fails): a reader never sees it half-written, and a large index is never held whole in memory.

        On S3 and GCS an object appears whole or not at all, so it is written in place (one request, not three).
        """
        if self.fs.type_name in _WHOLE_OBJECT_STORES:
            with self.fs.open_output_stream(self.path(name)) as stream:
                yield stream
            return
        temporary = f"{name}{TEMP_SUFFIX}"
        try:
            with self.fs.open_output_stream(self.path(temporary)) as stream:
                yield stream
            self.rename(temporary, name)
        except BaseException:
            self._forget(temporary)
            raise

    def _forget(self, name: str) -> None:
        """Best-effort removal of a temporary file after a failed write (the disk may be full)."""
        try:
            self.delete(name)
        except OSError:
            pass

    def upload(self, local: Path, name: str) -> None:
        """Copy a staged local file to the output folder (local: a rename when possible)."""
        if self.is_local:
            shutil.move(str(local), self.path(name))
        else:
            pafs.copy_files(str(local), self.path(name), source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)

    def remove_dir(self, name: str) -> None:
        """Remove an (empty) sub-folder if it exists."""
        if self.fs.get_file_info(self.path(name)).type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(name))

    def rename(self, source: str, target: str) -> None:
        """Move a file within the output folder (atomic on local filesystems)."""
        self.fs.move(self.path(source), self.path(target))

    def delete(self, name: str) -> None:
        """Remove a file if it exists."""
        if self.exists(name):
            self.fs.delete_file(self.path(name))

    def write_json(self, name: str, payload: Any) -> None:
        """Write JSON with stable formatting."""
        self.write_bytes(name, json.dumps(payload, indent=1, sort_keys=True, default=str).encode())

    def read_json(self, name: str) -> Any:
        """Read a JSON file from the output folder."""
        return json.loads(self.read_bytes(name))

    def read_marker(self, name: str) -> dict[str, Any] | None:
        """A JSON object, or None when it is absent, empty, truncated or not an object (treated as absent)."""
        try:
            payload = json.loads(self.read_bytes(name))
        except (FileNotFoundError, ValueError):  # ValueError covers JSONDecodeError and UnicodeDecodeError
            return None
        return payload if isinstance(payload, dict) else None

    def write_table(self, name: str, table: pa.Table) -> None:
        """Write a parquet file (through a temporary name, like every index), streamed: no second copy in memory."""
        with self.writing(name) as stream:
            pq.write_table(table, stream)

    def read_table(self, name: str) -> pa.Table:
        """Read a parquet file."""
        with self.fs.open_input_file(self.path(name)) as handle:
            return pq.read_table(handle)
