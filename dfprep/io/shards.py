"""Sample encoding, the shard commit protocol (tar → parquet → stats) and the one checked tar reader (`read_tar`)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dfprep.errors import DfprepError, one_line
from dfprep.io.integrity import KeptMarker
from dfprep.io.layout import STATS_SUFFIX, TEMP_SUFFIX, check_columns, unit_files
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
                if row_schema is not None:  # a column the schema lacks would be dropped silently
                    check_columns({c for row in self.rows for c in row}, row_schema, f"{self.name}.parquet")
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


class UnsafeMemberError(ShardReadError):
    """A shard holds a member that is never read: a type outside the reader's safe types, a link or a device."""


class SampleIntegrityError(ShardReadError):
    """One sample's members disagree with the crc32s its json recorded (or its json is unusable)."""

    def __init__(self, tar_name: str, key: str, problem: str):
        super().__init__(f"{tar_name}: sample {key!r}: {problem}")
        self.key, self.problem = key, problem


_BLOCK = tarfile.BLOCKSIZE


def read_samples(storage: Storage, tar_name: str, extensions: frozenset[str] | None,
                 limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A shard of an output folder, read with `read_tar` (the whole archive checked first, crc32s checked)."""
    with storage.fs.open_input_file(storage.path(tar_name)) as handle:
        yield from read_tar(handle, tar_name, extensions, limits)


def read_tar(handle: IO[bytes], tar_name: str, extensions: frozenset[str] | None = None,
             limits: ReadLimits = DEFAULT_LIMITS, *, safe_types: frozenset[str] | None = None,
             check_crcs: bool = True) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The one checked tar reader: a shard's samples in tar order as (key, payloads of the wanted member types).

    Bounded and checked, whoever reads (maps, preview, verify, the torch consumer): a seekable archive is walked
    header by header first (member count, names, types, sizes, the end-of-archive block right after the last
    member), so a truncated or corrupt shard fails before it delivers a single sample; a stream is checked
    member by member as it goes. Members of one key must be contiguous and unique; each sample's payloads must
    match the crc32s its json recorded (`check_crcs=False` leaves that to a caller that skips single samples).
    `extensions=None` keeps every member. Any damage is a ShardReadError naming the shard (and key).
    """
    if handle.seekable():
        check_archive(handle, tar_name, limits, safe_types)
        handle.seek(0)
    try:
        with tarfile.open(fileobj=handle, mode="r|", tarinfo=BoundedTarInfo) as tar:
            members = _members(tar_name, tar, extensions, limits, safe_types)
            for key, payloads in group_members(tar_name, members):
                if check_crcs:
                    problem = sample_problem(payloads, required=False, whole=extensions is None)[0]
                    if problem is not None:
                        raise SampleIntegrityError(tar_name, key, problem)
                wanted = extensions is None or "json" in extensions
                yield key, payloads if wanted else {e: p for e, p in payloads.items() if e != "json"}
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ShardReadError(f"{tar_name}: damaged or unreadable shard ({one_line(exc, fallback=type(exc).__name__)});"
                             " `dfprep verify` lists the damage, rerunning the command that wrote it redoes it") from None


def member_name(tar_name: str, info: tarfile.TarInfo, limits: ReadLimits,
                safe_types: frozenset[str] | None) -> tuple[str, str] | None:
    """(key, extension) of a member after checking name, kind, type and size; None for a folder entry."""
    if info.isdir():
        return None
    key, _, extension = info.name.partition(".")
    if not key or "/" in key or not extension:
        raise ShardReadError(f"{tar_name}: unexpected member name {info.name!r}")
    if not info.isreg():
        raise UnsafeMemberError(f"{tar_name}: refusing member {info.name!r} (links and devices are not read)")
    extension = extension.lower()
    if safe_types is not None and extension.rsplit(".", 1)[-1] not in safe_types:
        raise UnsafeMemberError(f"{tar_name}: refusing member {info.name!r} (type .{extension}); only "
                                f"{'/'.join(sorted(safe_types))} members are read, never pickles or code")
    if info.size > limits.max_member_bytes:
        raise ShardReadError(f"{tar_name}: member {info.name!r} declares {info.size} bytes, over the "
                             f"{limits.max_member_bytes}-byte limit (ReadLimits.max_member_bytes)")
    return key, extension


def _members(tar_name: str, tar: tarfile.TarFile, extensions: frozenset[str] | None, limits: ReadLimits,
             safe_types: frozenset[str] | None) -> Iterator[tuple[str, str, bytes | None]]:
    """(key, extension, payload) per member; the payload is read only for wanted types and the json."""
    count = 0
    for info in tar:
        count += 1
        if count > limits.max_members:
            raise ShardReadError(f"{tar_name}: more than {limits.max_members} members (ReadLimits.max_members)")
        named = member_name(tar_name, info, limits, safe_types)
        if named is None:
            continue
        key, extension = named
        wanted = extensions is None or extension in extensions or extension == "json"
        yield key, extension, tar.extractfile(info).read() if wanted else None  # type: ignore[union-attr]


def group_members(tar_name: str, members: Iterable[tuple[str, str, bytes | None]]
                  ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Consecutive members of one key form a sample; a key seen twice or a type twice in a key is an error."""
    key_now: str | None = None
    payloads: dict[str, bytes] = {}
    types: set[str] = set()
    seen: set[str] = set()
    for key, extension, payload in members:
        if key != key_now:
            if key_now is not None:
                yield key_now, payloads
            if key in seen:
                raise ShardReadError(f"{tar_name}: key {key!r} appears twice (members not contiguous)")
            seen.add(key)
            key_now, payloads, types = key, {}, set()
        if extension in types:
            raise ShardReadError(f"{tar_name}: key {key!r} has two .{extension} members")
        types.add(extension)
        if payload is not None:
            payloads[extension] = payload
    if key_now is not None:
        yield key_now, payloads


def sample_problem(payloads: dict[str, bytes], required: bool, whole: bool,
                   limits: ReadLimits = DEFAULT_LIMITS) -> tuple[str | None, Any]:
    """Why a sample fails its crc32s, or None; and its parsed json (None without one).

    `required`: the commit promised crc32s (marker format 2), so a missing json or record is a problem too;
    `whole`: every member was read, so a recorded member that is absent is one as well.
    """
    if "json" not in payloads:
        return ("no json member (its commit promises crc32s)" if required else None), None
    try:
        meta = load_json(payloads["json"], limits)
    except PayloadError as exc:
        return str(exc), None
    if not isinstance(meta, dict):
        return f"json is a {type(meta).__name__}, expected an object", meta
    recorded = meta.get(CRC_FIELD)
    if recorded is None:
        return ("its json records no crc32s" if required else None), meta
    problem = crc_mismatch({e: p for e, p in payloads.items() if e not in ("json", "map")}, recorded)
    missing = sorted(set(recorded) - set(payloads)) if whole and isinstance(recorded, dict) else []
    return problem or (f"member .{missing[0]} is missing" if missing else None), meta


def check_archive(handle: IO[bytes], tar_name: str, limits: ReadLimits = DEFAULT_LIMITS,
                  safe_types: frozenset[str] | None = None) -> None:
    """Walk every header of a seekable tar (no payload read) and check the end-of-archive block follows the last."""
    archive = None
    members: list[tarfile.TarInfo] = []
    try:
        archive = tarfile.open(fileobj=handle, mode="r:", tarinfo=BoundedTarInfo)
        for info in archive:
            members.append(info)
            if len(members) > limits.max_members:
                raise ShardReadError(f"{tar_name}: more than {limits.max_members} members (ReadLimits.max_members)")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise _unreadable(tar_name, handle, archive, exc) from exc
    for info in members:
        member_name(tar_name, info, limits, safe_types)
    _check_end(tar_name, handle, archive.offset, members)


def _unreadable(tar_name: str, handle: IO[bytes], archive: tarfile.TarFile | None,
                exc: BaseException) -> ShardReadError:
    """The error for a tar that tarfile itself gave up on: a member's data cut short, or an unreadable start."""
    if archive is not None and archive.members and "unexpected end of data" in str(exc):
        size = handle.seek(0, 2)
        return ShardReadError(f"{tar_name}: truncated at byte offset {size}, inside member "
                              f"{archive.members[-1].name!r} (its data should run to byte offset {archive.offset}); "
                              "re-run the command that wrote it")
    offset = archive.offset if archive else 0
    return ShardReadError(f"{tar_name}: not a readable tar at byte offset {offset} ({exc})")


def _check_end(tar_name: str, handle: IO[bytes], end: int, members: list[tarfile.TarInfo]) -> None:
    """The archive must end with a zero block right after its last member, else it was cut or damaged."""
    handle.seek(end)
    block = handle.read(_BLOCK)
    if len(block) == _BLOCK and not block.strip(b"\0"):
        return
    last = f"last intact header: {members[-1].name!r}" if members else "no intact member"
    if len(block) == _BLOCK:
        raise ShardReadError(f"{tar_name}: corrupt header at byte offset {end} ({last}); "
                             "re-run the command that wrote it")
    size = handle.seek(0, 2)
    raise ShardReadError(f"{tar_name}: truncated at byte offset {size}, expected data up to {end + _BLOCK} ({last}); "
                         "re-run the command that wrote it")


def commit_markers(storage: Storage, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(shard name, stats) for every unit whose commit marker exists, read one at a time (an unreadable marker
    counts as absent)."""
    for name in storage.listdir(prefix):
        if name.endswith(STATS_SUFFIX):
            stats = storage.read_marker(f"{prefix}/{name}" if prefix else name)
            if stats is not None:
                yield name[: -len(STATS_SUFFIX)], stats


def committed_units(storage: Storage, prefix: str = "", keep: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Shard name → its stats for every committed unit (`commit_markers`); with `keep`, only those keys of each
    marker, cut as it is read (a run holds a few numbers per unit, not its per-video rows, timings and
    checksums)."""
    kept = None if keep is None else frozenset(keep)
    return {unit: stats if kept is None else KeptMarker(stats, kept) for unit, stats in commit_markers(storage, prefix)}


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
