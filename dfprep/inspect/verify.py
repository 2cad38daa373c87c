"""`dfprep verify`: the cheap checks, then every shard (and map shard) read once.

Damage is found at three costs:

- **cheap** (dfprep.io.integrity: one listing plus the small indexes, never a tar);
- **default verify**: the cheap checks, then every tar streamed once: each member's crc32 against its
  sample's json, sample count and key order against the marker and the parquet index;
- **deep verify**: the same pass also hashes the whole tar and parquet and compares the marker's sha256.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import IO, Any, Callable

import pyarrow as pa
import pyarrow.fs as pafs

from dfprep.errors import DfprepError, one_line
from dfprep.io.integrity import (MARKER_CHECK_KEYS, Damage, damaged_units, file_sizes, output_problems, parquet_table,
                                 read_markers)
from dfprep.io.layout import DATASET_JSON, MAPS_FOLDER, STATS_SUFFIX
from dfprep.io.shards import ShardReadError, sample_problem
from dfprep.io.shards import read_tar as read_shard_tar
from dfprep.io.storage import Storage

_CHUNK = 1 << 20
VERIFY_KEYS = MARKER_CHECK_KEYS | {"format", "tar_sha256", "parquet_sha256"}  # what shard_problem reads of a marker


@dataclass
class VerifyReport:
    """What `dfprep verify` found: shards and samples checked, and every problem."""

    output: str
    deep: bool
    shards: int = 0
    samples: int = 0
    problems: list[Damage] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when nothing is damaged or missing."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for `--json`."""
        return {"output": self.output, "deep": self.deep, "clean": self.clean, "shards": self.shards,
                "samples": self.samples,
                "problems": [{"shard": d.shard, "kind": d.kind, "reason": d.reason} for d in self.problems]}


class HashingReader:
    """A read-only stream that sha256-hashes everything read through it (deep verify costs no second read)."""

    def __init__(self, stream: IO[bytes], hashing: bool):
        self.stream = stream
        self.digest = hashlib.sha256() if hashing else None

    def seekable(self) -> bool:
        """A stream: the checked reader checks it member by member as it goes."""
        return False

    def read(self, size: int = -1) -> bytes:
        """Read and hash."""
        data = self.stream.read(size)
        if self.digest is not None:
            self.digest.update(data)
        return data

    def drain(self) -> None:
        """Read to the end (the tar's trailing padding counts in its sha256)."""
        while self.read(_CHUNK):
            pass


def _indexed_fields(meta: Any) -> tuple[Any, Any]:
    """(label, frame) a sample's json says: the json is not covered by the crc32s, the index cross-checks it."""
    return (meta.get("label"), meta.get("frame")) if isinstance(meta, dict) else (None, None)


def read_tar(storage: Storage, name: str, deep: bool,
             format_version: int) -> tuple[list[str], list[tuple[Any, Any]], str | None, str | None]:
    """Stream one tar once through the checked reader: (keys in order, (label, frame) per sample, first sample
    problem or None, sha256 when deep)."""
    keys: list[str] = []
    fields: list[tuple[Any, Any]] = []
    with storage.fs.open_input_stream(storage.path(name)) as stream:
        reader = HashingReader(stream, deep)
        try:
            for key, payloads in read_shard_tar(reader, name, check_crcs=False):  # type: ignore[arg-type]
                problem, meta = sample_problem(payloads, required=format_version >= 2, whole=True)
                keys.append(key)
                fields.append(_indexed_fields(meta))
                if problem is not None:
                    return keys, fields, f"sample {key!r}: {problem}", None
        except ShardReadError as exc:
            return keys, fields, f"not a readable tar after {len(keys)} samples ({one_line(exc, fallback='damaged')})", None
        reader.drain()
    return keys, fields, None, reader.digest.hexdigest() if reader.digest else None


def read_index(storage: Storage, name: str, deep: bool) -> tuple[dict[str, list] | None, str | None]:
    """A shard index's key (and label, frame when present) columns, None when unreadable; its sha256 when deep."""
    try:
        data = storage.read_bytes(name)
        table = parquet_table(data)
        columns = {c: table.column(c).to_pylist() for c in ("key", "label", "frame") if c in table.column_names}
    except (OSError, pa.ArrowException):
        return None, None
    return (columns if "key" in columns else None), hashlib.sha256(data).hexdigest() if deep else None


def _index_disagreement(index: dict[str, list], keys: list[str], fields: list[tuple[Any, Any]]) -> str | None:
    """How the parquet index disagrees with what the tar holds (keys and order, then label and frame)."""
    if index["key"] != keys:
        return "its parquet index lists other keys (or another order) than the tar holds"
    for position, name in enumerate(("label", "frame")):
        if name in index:
            for key, indexed, (*found,) in zip(keys, index[name], fields):
                if found[position] is not None and found[position] != indexed:
                    return f"sample {key!r}: its json says {name} {found[position]!r}, its index {indexed!r}"
    return None


def keys_digest(keys: list[str]) -> str:
    """A shard's keys in tar order as one sha256: what a map shard is compared with, instead of every key kept."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def shard_problem(storage: Storage, unit: str, stats: dict[str, Any], deep: bool,
                  expected_keys: str | None = None) -> tuple[str | None, list[str]]:
    """Read one committed shard whole: (why it is damaged or None, its keys in tar order); `expected_keys` is the
    face shard's keys_digest, which a map shard's keys must match."""
    if not stats.get("tar"):
        return None, []
    version = stats.get("format", 1) if isinstance(stats.get("format", 1), int) else 1
    keys, fields, problem, tar_sha = read_tar(storage, stats["tar"], deep, version)
    if problem is not None:
        return problem, keys
    if len(keys) != stats.get("samples"):
        return f"holds {len(keys)} samples, its commit marker promises {stats.get('samples')}", keys
    index, index_sha = read_index(storage, f"{unit}.parquet", deep)
    if index is None:
        return f"{unit}.parquet is unreadable", keys
    problem = _index_disagreement(index, keys, fields)
    if problem is None and expected_keys is not None and keys_digest(keys) != expected_keys:
        problem = "holds other keys (or another order) than its face shard"
    if problem is None and deep and stats.get("tar_sha256") and tar_sha != stats["tar_sha256"]:
        problem = f"{stats['tar']} sha256 differs from its commit marker (damaged bytes)"
    if problem is None and deep and stats.get("parquet_sha256") and index_sha != stats["parquet_sha256"]:
        problem = f"{unit}.parquet sha256 differs from its commit marker"
    return problem, keys


def _verify_folder(storage: Storage, folder: str, report: VerifyReport, face_keys: dict[str, str] | None,
                   step: Callable[[], None]) -> dict[str, str]:
    """Check every committed shard of one folder (the face output, or one map set); returns unit → keys_digest.
    Memory grows with the shards, not the videos or samples: markers are cut to the keys the checks read."""
    sizes = file_sizes(storage, folder)
    markers, unreadable = read_markers(storage, sizes, folder, keep=VERIFY_KEYS)
    prefix = f"{folder}/" if folder else ""
    report.problems += [Damage(prefix + unit, reason) for unit, reason in unreadable.items()]
    cheap = damaged_units(storage, markers, folder)
    keys_by_unit: dict[str, str] = {}
    for unit, stats in sorted(markers.items()):
        report.shards += 1
        problem = cheap.get(unit)
        if problem is None:
            inner = Storage(storage.path(folder), storage.fs) if folder else storage
            expected = face_keys.get(unit) if face_keys is not None else None
            problem, keys = shard_problem(inner, unit, stats, report.deep, expected)
            keys_by_unit[unit] = keys_digest(keys)
            report.samples += len(keys)
        if problem is not None:
            report.problems.append(Damage(prefix + unit, problem))
        step()
    report.problems += [Damage(prefix + n, "leftover temporary file of an interrupted commit", "incomplete")
                        for n in sizes if n.endswith(".tar.tmp")]
    return keys_by_unit


def map_sets(storage: Storage) -> list[str]:
    """Names of the companion map sets under maps/."""
    selector = pafs.FileSelector(storage.path(MAPS_FOLDER), allow_not_found=True)
    return sorted(i.base_name for i in storage.fs.get_file_info(selector) if i.type == pafs.FileType.Directory)


def check_is_output(storage: Storage) -> None:
    """Refuse, in one line, a folder that does not exist or holds no dfprep output."""
    if storage.fs.get_file_info(storage.root).type != pafs.FileType.Directory:
        raise DfprepError(f"{storage.root}: no such output folder")
    if not storage.exists(DATASET_JSON) and not any(n.endswith(STATS_SUFFIX) for n in file_sizes(storage)):
        raise DfprepError(f"{storage.root} is not a dfprep output (no {DATASET_JSON} and no commit markers)")


def verify_output(out: str | Storage, deep: bool = False, step: Callable[[], None] = lambda: None) -> VerifyReport:
    """`dfprep verify`: the cheap checks, then every shard (and map shard) read once; see the module docstring."""
    storage = out if isinstance(out, Storage) else Storage(out)
    check_is_output(storage)
    report = VerifyReport(storage.display, deep)
    cheap = output_problems(storage)
    report.problems += [d for d in cheap if d.kind == "incomplete" or not d.shard]
    face_keys = _verify_folder(storage, "", report, None, step)
    for name in map_sets(storage):
        _verify_folder(storage, f"{MAPS_FOLDER}/{name}", report, face_keys, step)
    return report


def count_shards(storage: Storage) -> int:
    """Committed shards verify will read (for a progress bar's total)."""
    total = sum(1 for n in file_sizes(storage) if n.endswith(STATS_SUFFIX))
    return total + sum(sum(1 for n in file_sizes(storage, f"{MAPS_FOLDER}/{m}") if n.endswith(STATS_SUFFIX))
                       for m in map_sets(storage))
