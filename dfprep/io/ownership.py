"""Which folders dfprep may write into: its own outputs only, never a dataset or a user's folder.

An output folder is dfprep's once its ownership file is written, before anything else. A folder that
exists, is not empty and has no such file belongs to someone else and is refused; so is an output
inside an input root, or an input root (or any input video) inside the output.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from dfprep import __version__
from dfprep.errors import DfprepError, one_line
from dfprep.io.layout import LOCK_FILE, OWNERSHIP_FILE, TEMP_SUFFIX
from dfprep.io.storage import Storage


def open_output(output: str, filesystem: pafs.FileSystem | None = None) -> Storage:
    """The output folder as Storage; an empty name, a bad URI or a path that is a file is a one-line error."""
    if not str(output).strip():
        raise DfprepError("the output (-o) is empty: name a folder or a URI (s3://, gs://, file://)")
    try:
        storage = Storage(str(output), filesystem)
        kind = storage.fs.get_file_info(storage.root).type
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DfprepError(f"cannot use {output!r} as the output: {one_line(exc)}") from None
    if kind == pafs.FileType.File:
        raise DfprepError(f"the output {storage.root} is a file, not a folder: name a folder")
    return storage


def folder_entries(storage: Storage) -> list[str]:
    """Names of everything directly inside the folder (files and folders), empty when it does not exist."""
    selector = pafs.FileSelector(storage.root, allow_not_found=True)
    return sorted(info.base_name for info in storage.fs.get_file_info(selector))


def check_claimable(storage: Storage, marker: str, adopt: Callable[[Storage], bool] | None = None,
                    what: str = "output") -> None:
    """Refuse a folder that holds anything and was not written by dfprep (read-only: nothing is written)."""
    ignored = {LOCK_FILE, f"{marker}{TEMP_SUFFIX}"}
    entries = [name for name in folder_entries(storage) if name not in ignored]
    if not entries or marker in entries or (adopt is not None and adopt(storage)):
        return
    shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
    raise DfprepError(f"the {what} folder {storage.root} is not empty ({shown}) and was not written by dfprep "
                      f"(no {marker}): dfprep only writes into, and deletes from, its own folders; choose a new "
                      "or empty folder")


def claim(storage: Storage, marker: str = OWNERSHIP_FILE) -> None:
    """Mark the folder as dfprep's: its first file, written once (the caller holds the folder's lock)."""
    if not storage.exists(marker):
        storage.write_json(marker, {"format": "dfprep output", "version": 1, "dfprep": __version__,
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def check_separate(storage: Storage, roots: Iterable[str], video_paths: Iterable[str]) -> None:
    """Refuse an output inside an input root, an input root inside the output, or any input video inside it."""
    if not storage.is_local:
        return  # an object store cannot hold a local dataset root
    output = {os.path.realpath(storage.root), os.path.abspath(storage.root)}
    for root in roots:
        resolved = os.path.realpath(root)
        for out in output:
            if _inside(out, resolved):
                raise DfprepError(f"the output {storage.root} is inside the input root {root}: dfprep would write "
                                  "into the dataset; choose an output folder outside it")
            if _inside(resolved, out):
                raise DfprepError(f"the input root {root} is inside the output {storage.root}: choose an output "
                                  "folder that does not contain the dataset")
    for path in video_paths:
        if any(_inside(os.path.abspath(path), out) for out in output):
            raise DfprepError(f"the input video {path} is inside the output {storage.root}: choose an output "
                              "folder that does not contain the dataset")


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or below it."""
    folder = folder.rstrip(os.sep) or os.sep
    return path == folder or path.startswith(folder if folder.endswith(os.sep) else folder + os.sep)


@contextmanager
def output_errors(storage: Storage) -> Iterator[None]:
    """An OSError from the output (full disk, no permission, no credentials) becomes one line and the way on."""
    try:
        yield
    except OSError as exc:
        raise DfprepError(f"writing to {storage.root} failed ({one_line(exc)}); committed shards are safe: "
                          "fix the output and rerun the same command to continue") from None
