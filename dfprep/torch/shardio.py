"""Reading shard tars safely: only image/npy/json members, integrity checked, samples grouped, maps joined by key.

Python's tarfile (and so webdataset's tar iterator) stops *silently* at a truncated or corrupt header, which
would quietly drop the rest of a shard. Here the archive's headers are walked first, every member name is
checked against the safe types, and the end-of-archive block must be where the last member ends; only then
is any payload read. A bad shard therefore fails before it delivers a single sample.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

from webdataset.tariterators import base_plus_ext

from dfprep.errors import DfprepError
from dfprep.io.layout import MAP_MEMBER
from dfprep.io.payloads import CRC_FIELD, DEFAULT_LIMITS, PayloadError, ReadLimits, crc_mismatch, load_json
from dfprep.io.shards import BoundedTarInfo
from dfprep.torch.shardlist import ShardSource, open_binary

SAFE_TYPES = frozenset({"jpg", "jpeg", "png", "webp", "npy", "json"})
_BLOCK = tarfile.BLOCKSIZE


class ShardError(DfprepError):
    """A shard cannot be read as promised; the message names the shard and the member or byte offset."""


class UnsafeMemberError(ShardError):
    """A shard holds a member type that is never decoded (pickle, .pth, .pyd, .cls, …)."""


class MapMismatchError(ShardError):
    """A companion map shard does not hold the same keys in the same order as its face shard."""


@dataclass
class RawSample:
    """One sample's undecoded members (extension → bytes) and where it came from."""

    key: str
    members: dict[str, bytes]
    shard: str
    meta: dict[str, Any] = field(default_factory=dict)


def member_type(shard: str, name: str) -> tuple[str, str]:
    """Split a member name into key and extension, refusing anything but the safe types."""
    key, extension = base_plus_ext(name)
    if key is None or extension is None:
        raise UnsafeMemberError(f"{shard}: member {name!r} has no extension; only "
                                f"{'/'.join(sorted(SAFE_TYPES))} members are read")
    if extension.rsplit(".", 1)[-1].lower() not in SAFE_TYPES:
        raise UnsafeMemberError(f"{shard}: refusing member {name!r} (type .{extension}); only "
                                f"{'/'.join(sorted(SAFE_TYPES))} members are read, never pickles or code")
    return key, extension.lower()


def _walk_headers(shard: str, handle: IO[bytes],
                  limits: ReadLimits = DEFAULT_LIMITS) -> tuple[list[tarfile.TarInfo], int]:
    """Every member header (at most `limits.max_members`), plus the byte offset where the end-of-archive block must start."""
    archive = None
    members: list[tarfile.TarInfo] = []
    try:
        archive = tarfile.open(fileobj=handle, mode="r:", tarinfo=BoundedTarInfo)
        for info in archive:
            members.append(info)
            if len(members) > limits.max_members:
                raise ShardError(f"{shard}: more than {limits.max_members} members (ReadLimits.max_members)")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise _unreadable(shard, handle, archive, exc) from exc
    return members, archive.offset


def _unreadable(shard: str, handle: IO[bytes], archive: tarfile.TarFile | None, exc: BaseException) -> ShardError:
    """The error for a tar that tarfile itself gave up on: a member's data cut short, or an unreadable start."""
    if archive is not None and archive.members and "unexpected end of data" in str(exc):
        size = handle.seek(0, 2)
        return ShardError(f"{shard}: truncated at byte offset {size}, inside member {archive.members[-1].name!r} "
                          f"(its data should run to byte offset {archive.offset}); re-run the command that wrote it")
    return ShardError(f"{shard}: not a readable tar at byte offset {archive.offset if archive else 0} ({exc})")


def _check_end(shard: str, handle: IO[bytes], end: int, members: list[tarfile.TarInfo]) -> None:
    """The archive must end with a zero block right after its last member, else it was cut or damaged."""
    handle.seek(end)
    block = handle.read(_BLOCK)
    if len(block) == _BLOCK and not block.strip(b"\0"):
        return
    last = f"last intact header: {members[-1].name!r}" if members else "no intact member"
    if len(block) == _BLOCK:
        raise ShardError(f"{shard}: corrupt header at byte offset {end} ({last}); re-run the command that wrote it")
    size = handle.seek(0, 2)
    raise ShardError(f"{shard}: truncated at byte offset {size}, expected data up to {end + _BLOCK} ({last}); "
                     "re-run the command that wrote it")


def read_members(shard: str, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, payload) for every member, after checking types, sizes and integrity of the whole tar."""
    with open_binary(shard) as handle:
        members, end = _walk_headers(shard, handle, limits)
        files = [info for info in members if not info.isdir()]  # folder entries carry no payload
        for info in files:
            if not info.isreg():
                raise UnsafeMemberError(f"{shard}: refusing member {info.name!r} (links and devices are not read)")
            if info.size > limits.max_member_bytes:
                raise ShardError(f"{shard}: member {info.name!r} declares {info.size} bytes, over the "
                                 f"{limits.max_member_bytes}-byte limit (ReadLimits.max_member_bytes)")
        names = [member_type(shard, info.name) for info in files]
        _check_end(shard, handle, end, members)
        for info, (key, extension) in zip(files, names):
            handle.seek(info.offset_data)
            payload = handle.read(info.size)
            if len(payload) != info.size:
                raise ShardError(f"{shard}: truncated at byte offset {info.offset_data + len(payload)} "
                                 f"inside member {info.name!r}")
            yield key, extension, payload


def group_samples(shard: str, members: Iterator[tuple[str, str, bytes]]) -> Iterator[RawSample]:
    """Consecutive members with one key form a sample; a key seen twice is an error, never a merge."""
    current: RawSample | None = None
    seen: set[str] = set()
    for key, extension, payload in members:
        if current is None or key != current.key:
            if current is not None:
                yield current
            if key in seen:
                raise ShardError(f"{shard}: key {key!r} appears twice (members not contiguous)")
            seen.add(key)
            current = RawSample(key, {}, shard)
        if extension in current.members:
            raise ShardError(f"{shard}: key {key!r} has two .{extension} members")
        current.members[extension] = payload
    if current is not None:
        yield current


def shard_samples(shard: ShardSource, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[RawSample]:
    """A shard's raw samples; the count must match what its commit marker or index promised."""
    count = 0
    for sample in group_samples(shard.tar, read_members(shard.tar, limits)):
        count += 1
        yield sample
    if shard.samples is not None and count != shard.samples:
        raise ShardError(f"{shard.tar}: holds {count} samples but its commit marker promises {shard.samples}")


def join_maps(faces: Iterator[RawSample], maps: Iterator[RawSample], shard: ShardSource) -> Iterator[RawSample]:
    """Attach each map to its face sample in lockstep; any key or length mismatch raises."""
    position = 0
    for sample in faces:
        companion = next(maps, None)
        if companion is None or companion.key != sample.key:
            found = "nothing (map shard ended)" if companion is None else repr(companion.key)
            raise MapMismatchError(f"{shard.maps}: sample {position} is {found} but {shard.tar} has "
                                   f"{sample.key!r}; map shards must hold the same keys in the same order")
        if MAP_MEMBER not in companion.members:
            raise MapMismatchError(f"{shard.maps}: key {sample.key!r} has no .{MAP_MEMBER} member")
        check_companion(companion)
        sample.members["map"] = companion.members[MAP_MEMBER]
        position += 1
        yield sample
    extra = next(maps, None)
    if extra is not None:
        raise MapMismatchError(f"{shard.maps}: extra map {extra.key!r} after the last face of {shard.tar}")


def check_companion(companion: RawSample) -> None:
    """A map sample's PNG must match the crc32 its json recorded (map shards written before crc32s have none)."""
    if "json" not in companion.members:
        return
    try:
        meta = load_json(companion.members["json"])
    except PayloadError as exc:
        raise ShardError(f"{companion.shard}: sample {companion.key!r}: {exc}") from None
    problem = crc_mismatch({MAP_MEMBER: companion.members[MAP_MEMBER]},
                           meta.get(CRC_FIELD) if isinstance(meta, dict) else None)
    if problem is not None:
        raise ShardError(f"{companion.shard}: sample {companion.key!r}: {problem}")


def read_shard(shard: ShardSource, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[RawSample]:
    """Raw samples of a face shard, with its companion maps joined when it has any."""
    faces = shard_samples(shard, limits)
    if shard.maps is None:
        return faces
    maps = group_samples(shard.maps, read_members(shard.maps, limits))
    return join_maps(faces, maps, shard)
