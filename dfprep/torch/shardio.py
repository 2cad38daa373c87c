"""Reading shard tars safely: only image/npy/json members, integrity checked, samples grouped, maps joined by key.

Python's tarfile (and so webdataset's tar iterator) stops *silently* at a truncated or corrupt header, which
would quietly drop the rest of a shard. Every tar goes through the one checked reader (dfprep.io.shards.read_tar):
the archive's headers are walked first, every member name is checked against the safe types, and the
end-of-archive block must be where the last member ends; only then is any payload read. A bad shard therefore
fails before it delivers a single sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from dfprep.io.layout import MAP_MEMBER
from dfprep.io.payloads import DEFAULT_LIMITS, ReadLimits
from dfprep.io.shards import ShardReadError, read_tar, sample_problem
from dfprep.io.shards import UnsafeMemberError  # noqa: F401 - re-exported: a member type never decoded, or a link
from dfprep.torch.shardlist import ShardSource, open_binary

SAFE_TYPES = frozenset({"jpg", "jpeg", "png", "webp", "npy", "json"})


ShardError = ShardReadError  # a shard cannot be read as promised; the message names the shard and the member or offset


class MapMismatchError(ShardError):
    """A companion map shard does not hold the same keys in the same order as its face shard."""


@dataclass
class RawSample:
    """One sample's undecoded members (extension → bytes) and where it came from."""

    key: str
    members: dict[str, bytes]
    shard: str
    meta: dict[str, Any] = field(default_factory=dict)


def raw_samples(shard: str, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[RawSample]:
    """A tar's samples through the one checked reader (dfprep.io.shards.read_tar), safe member types only.

    The crc32s are checked per sample when its json is parsed (dfprep.torch.data), so a reader that skips bad
    samples skips one sample, not the rest of its shard.
    """
    with open_binary(shard) as handle:
        for key, members in read_tar(handle, shard, None, limits, safe_types=SAFE_TYPES, check_crcs=False):
            yield RawSample(key, members, shard)


def shard_samples(shard: ShardSource, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[RawSample]:
    """A shard's raw samples; the count must match what its commit marker or index promised."""
    count = 0
    for sample in raw_samples(shard.tar, limits):
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
    problem = sample_problem({MAP_MEMBER: companion.members[MAP_MEMBER],
                              **({"json": companion.members["json"]} if "json" in companion.members else {})},
                             required=False, whole=False)[0]
    if problem is not None:
        raise ShardError(f"{companion.shard}: sample {companion.key!r}: {problem}")


def read_shard(shard: ShardSource, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[RawSample]:
    """Raw samples of a face shard, with its companion maps joined when it has any."""
    faces = shard_samples(shard, limits)
    if shard.maps is None:
        return faces
    maps = raw_samples(shard.maps, limits)
    return join_maps(faces, maps, shard)
