"""Sample encoding, the shard commit protocol (tar → parquet → stats) and the one checked tar reader."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dfprep.errors import DfprepError, one_line
from dfprep.io.layout import STATS_SUFFIX, TEMP_SUFFIX, unit_files
from dfprep.io.payloads import CRC_FIELD, DEFAULT_LIMITS, PayloadError, ReadLimits, crc_mismatch, load_json, with_crcs
from dfprep.io.storage import Storage

MARKER_FORMAT = 2  # 2: the marker records size and sha256 of the tar and the parquet; samples record crc32s
STAGING_PREFIX = "dfprep-"  # local staging folders: dfprep-<pid>-<random> in the temp directory


class ShardReadError(DfprepError):
    """A shard cannot be read as promised (damaged, truncated, hostile); the message names the shard and key."""


def encode_image(rgb: np.ndarray, image_format: str, quality: int) -> bytes:
    """Encode an RGB crop as jpg/png/webp bytes."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = {
        "jpg": [cv2.IMWRITE_JPEG_QUALITY, quality],
        "png": [cv2.IMWRITE_PNG_COMPRESSION, 3],
        "webp": [cv2.IMWRITE_WEBP_QUALITY, quality],
    }[image_format]
    ok, buffer = cv2.imencode(f".{image_format}", bgr, params)
    if not ok:
        raise ValueError(f"cannot encode {image_format}")
    return buffer.tobytes()


def encode_npy(array: np.ndarray) -> bytes:
    """Serialise an array as .npy (never pickled objects)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


@dataclass
class Sample:
    """One aligned face ready for a shard: members by extension, plus its index row."""

    key: str
    members: dict[str, bytes]  # extension (e.g. "jpg", "ldm.npy", "json") → payload
    row: dict[str, Any]  # the per-shard parquet row

    def size(self) -> int:
        """Bytes this sample adds to a tar (payloads only)."""
        return sum(len(v) for v in self.members.values())


def _tar_member(name: str, payload: bytes) -> tarfile.TarInfo:
    """A reproducible tar header: fixed mtime, owner and mode, so reruns give identical bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o444
    info.uname = info.gname = ""
    return info


class HashingFile(io.RawIOBase):
    """A write-only file that also counts and sha256-hashes what passes through (the checksum costs no reread)."""

    def __init__(self, path: Path):
        super().__init__()
        self._file = open(path, "wb")
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        """Write-only."""
        return True

    def tell(self) -> int:
        """Bytes written so far (tarfile asks once, when it opens)."""
        return self.size

    def write(self, data: Any) -> int:
        """Write, hash and count one chunk."""
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += len(view)
        return self._file.write(view)

    def close(self) -> None:
        """Close the underlying file."""
        if not self.closed:
            self._file.close()
        super().close()


def table_bytes(table: pa.Table) -> bytes:
    """A table serialised as parquet in memory (a shard's index is small), so it can be hashed before upload."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return buffer.getvalue().to_pybytes()


@dataclass
class ShardWriter:
    """Streams samples into a local staging tar; `commit` publishes tar, parquet, then stats."""

    storage: Storage
    name: str  # e.g. train-000003
    staging: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-")))
    rows: list[dict[str, Any]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    bytes_written: int = 0

    def __post_init__(self) -> None:
        self._tar_path = self.staging / f"{self.name}.tar"
        self._tar_file = HashingFile(self._tar_path)
        self._tar = tarfile.open(fileobj=self._tar_file, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, sample: Sample) -> None:
        """Append one sample's members, its json recording their crc32s; a duplicate key is a bug, never written twice."""
        if sample.key in self.keys:
            raise ValueError(f"duplicate sample key {sample.key}")
        self.keys.add(sample.key)
        for extension, payload in with_crcs(sample.members).items():
            self._tar.addfile(_tar_member(f"{sample.key}.{extension}", payload), io.BytesIO(payload))
        self.rows.append({"key": sample.key, **sample.row})
        self.bytes_written += sample.size()

    def commit(self, stats: dict[str, Any], row_schema: pa.Schema | None = None) -> dict[str, Any]:
        """Publish: tar.tmp → tar (skipped when empty), parquet, then `_stats.json` as the commit marker.

        The marker records each file's size and sha256, taken from the staged bytes before upload, so any
        reader can tell a truncated, replaced or missing file from the one this commit published.
        """
        self._close_tar()
        try:
            checksums = {"tar_bytes": 0, "tar_sha256": None, "parquet_bytes": 0, "parquet_sha256": None}
            if self.rows:
                self.storage.upload(self._tar_path, f"{self.name}.tar.tmp")
                self.storage.rename(f"{self.name}.tar.tmp", f"{self.name}.tar")
                index = table_bytes(pa.Table.from_pylist(self.rows, schema=row_schema))
                self.storage.write_bytes(f"{self.name}.parquet", index)
                checksums = {"tar_bytes": self._tar_file.size, "tar_sha256": self._tar_file.digest.hexdigest(),
                             "parquet_bytes": len(index), "parquet_sha256": hashlib.sha256(index).hexdigest()}
            stats = {**stats, "shard": self.name, "samples": len(self.rows),
                     "tar": f"{self.name}.tar" if self.rows else None, **checksums, "format": MARKER_FORMAT}
            self.storage.write_json(f"{self.name}{STATS_SUFFIX}", stats)
            return stats
        finally:
            self.discard()

    def _close_tar(self) -> None:
        """Finish the staged tar (end-of-archive blocks) and its file."""
        if not self._tar.closed:
            self._tar.close()
        self._tar_file.close()

    def discard(self) -> None:
        """Drop the staging folder (after commit, or when the unit failed)."""
        self._close_tar()
        shutil.rmtree(self.staging, ignore_errors=True)


_EXTENDED_HEADERS = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                               tarfile.GNUTYPE_LONGLINK})
MAX_EXTENDED_HEADER_BYTES = 2**20  # dfprep writes none (USTAR); a pax/GNU long-name header is a few hundred bytes


class BoundedTarInfo(tarfile.TarInfo):
    """A tar header that refuses an extended (pax/GNU) header declaring more than 1 MiB.

    tarfile reads such a header's whole body into memory before any member is seen, so a shard declaring a
    2 GB pax header would cost 2 GB before a reader's own size checks could run.
    """

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        """tarfile's hook for each header it reads: refuse an oversized extended header before its body is read."""
        if self.type in _EXTENDED_HEADERS and self.size > MAX_EXTENDED_HEADER_BYTES:
            raise tarfile.ReadError(f"an extended tar header declares {self.size} bytes "
                                    f"(over the {MAX_EXTENDED_HEADER_BYTES}-byte limit)")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def read_samples(storage: Storage, tar_name: str, extensions: frozenset[str],
                 limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A shard's samples in tar order, streamed: (key, payloads of the wanted member types, undecoded).

    Bounded and checked: a member over the size limit is refused before it is read, and each sample's
    payloads must match the crc32s its json recorded. Any damage is a ShardReadError naming shard and key.
    """
    try:
        with storage.fs.open_input_stream(storage.path(tar_name)) as stream, \
                tarfile.open(fileobj=stream, mode="r|", tarinfo=BoundedTarInfo) as tar:
            samples = _grouped_members(tar_name, tar, extensions, limits)
            yield from _checked_samples(tar_name, samples, "json" in extensions, limits)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ShardReadError(f"{tar_name}: damaged or unreadable shard ({one_line(exc, fallback=type(exc).__name__)});"
                             " `dfprep verify` lists the damage, rerunning the command that wrote it redoes it") from None


def _grouped_members(tar_name: str, tar: tarfile.TarFile, extensions: frozenset[str],
                     limits: ReadLimits) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, payloads) per sample, keeping the wanted member types plus the json that records their crc32s."""
    key_now: str | None = None
    payloads: dict[str, bytes] = {}
    for member in tar:
        key, _, extension = member.name.partition(".")
        if not key or "/" in key or not extension:
            raise ShardReadError(f"{tar_name}: unexpected member name {member.name!r}")
        if member.size > limits.max_member_bytes:
            raise ShardReadError(f"{tar_name}: member {member.name!r} declares {member.size} bytes, over the "
                                 f"{limits.max_member_bytes}-byte limit")
        if key != key_now:
            if key_now is not None:
                yield key_now, payloads
            key_now, payloads = key, {}
        if (extension.lower() in extensions or extension == "json") and member.isfile():
            payloads[extension.lower()] = tar.extractfile(member).read()  # type: ignore[union-attr]
    if key_now is not None:
        yield key_now, payloads


def _checked_samples(tar_name: str, samples: Iterator[tuple[str, dict[str, bytes]]], keep_json: bool,
                     limits: ReadLimits) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Check each sample against the crc32s in its json, then drop the json unless it was asked for."""
    for key, payloads in samples:
        if "json" in payloads:
            try:
                meta = load_json(payloads["json"], limits)
            except PayloadError as exc:
                raise ShardReadError(f"{tar_name}: sample {key!r}: {exc}") from None
            if not isinstance(meta, dict):
                raise ShardReadError(f"{tar_name}: sample {key!r}: json is a {type(meta).__name__}, expected an object")
            problem = crc_mismatch({e: p for e, p in payloads.items() if e != "json"}, meta.get(CRC_FIELD))
            if problem is not None:
                raise ShardReadError(f"{tar_name}: sample {key!r}: {problem}")
        yield key, payloads if keep_json else {e: p for e, p in payloads.items() if e != "json"}


def committed_units(storage: Storage, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Shard name → its stats for every unit whose commit marker exists (an unreadable marker counts as absent)."""
    done = {}
    for name in storage.listdir(prefix):
        if name.endswith(STATS_SUFFIX):
            stats = storage.read_marker(f"{prefix}/{name}" if prefix else name)
            if stats is not None:
                done[name[: -len(STATS_SUFFIX)]] = stats
    return done


def remove_uncommitted(storage: Storage, unit_names: Iterable[str], committed: set[str], prefix: str = "") -> list[str]:
    """Delete leftovers of planned units: everything of those without a valid commit marker (marker first),
    temporaries of the others; returns what was removed."""
    removed = []
    present = set(storage.listdir(prefix))
    for unit in unit_names:
        for name in unit_files(unit):
            if name in present and (unit not in committed or name.endswith(TEMP_SUFFIX)):
                storage.delete(f"{prefix}/{name}" if prefix else name)
                removed.append(name)
    return removed


def remove_stale_staging(grace_s: float = 0.0) -> list[str]:
    """Delete staging folders (dfprep-<pid>-*) of processes that no longer run on this machine."""
    import time

    root, removed = Path(tempfile.gettempdir()), []
    deadline = time.monotonic() + grace_s
    for folder in root.glob(f"{STAGING_PREFIX}*-*"):
        pid = folder.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if not folder.is_dir() or not pid.isdigit() or int(pid) == os.getpid():
            continue
        while process_alive(int(pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
