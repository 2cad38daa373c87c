"""Which shards to stream: an OUT folder's committed units, tar paths or brace patterns, plus their indexes."""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from dataclasses import dataclass
from typing import IO, Any, Iterable, Sequence

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from webdataset.shardlists import expand_urls

from dfprep.errors import DfprepError
from dfprep.io.layout import STATS_SUFFIX, shard_split
from dfprep.io.shards import committed_units
from dfprep.io.storage import Storage, resolve_uri

FILTER_FIELDS = ("split", "label", "method", "dataset")


class ShardListError(DfprepError):
    """The shard source cannot be resolved: missing folder, shard, index or companion maps."""


@dataclass(frozen=True)
class ShardSource:
    """One face shard to stream: its tar, per-shard index, promised sample count and companion map shard."""

    tar: str
    name: str  # e.g. train-000003
    index: str | None = None  # per-shard parquet (one row per sample)
    samples: int | None = None  # from the commit marker or the index
    maps: str | None = None  # companion map shard with the same keys in the same order


def open_binary(uri: str) -> IO[bytes]:
    """A seekable binary handle on a local file or any pyarrow filesystem URI."""
    if "://" not in uri:
        return open(uri, "rb")
    filesystem, path = resolve_uri(uri)
    return filesystem.open_input_file(path)  # type: ignore[return-value]


def _kind(uri: str) -> pafs.FileType:
    """File, directory or not found, whatever the filesystem."""
    filesystem, path = resolve_uri(uri)
    return filesystem.get_file_info(path).type


def split_query(uri: str) -> tuple[str, str]:
    """`s3://b/p?endpoint_override=…` → (`s3://b/p`, `?endpoint_override=…`): paths join before the query."""
    if "://" not in uri:
        return uri, ""
    path, mark, query = uri.partition("?")
    return path, mark + query


def is_folder(uri: str) -> bool:
    """Whether a local folder or an object-store prefix holding files exists there."""
    return _kind(uri) == pafs.FileType.Directory


def join(base: str, *parts: str) -> str:
    """Join path parts the same way for local paths and URIs (a URI's query string stays at the end)."""
    if "://" not in base:
        return os.path.join(base, *parts)
    path, query = split_query(base)
    return posixpath.join(path, *parts) + query


def _parent(uri: str) -> str:
    """The folder holding a file, for local paths and URIs alike (with the URI's query string)."""
    if "://" not in uri:
        return os.path.dirname(os.path.abspath(uri))
    path, query = split_query(uri)
    return posixpath.dirname(path) + query


def _base(uri: str) -> str:
    """A file's own name."""
    return posixpath.basename(split_query(uri)[0])


def out_folder_shards(folder: str) -> list[ShardSource]:
    """Every committed, non-empty unit of an OUT folder (the `_stats.json` markers are the truth)."""
    units = committed_units(Storage(folder))
    if not units:
        raise ShardListError(f"{folder}: no committed shards (no *{STATS_SUFFIX} files); run `dfprep extract` first")
    return [ShardSource(tar=join(folder, stats["tar"]), name=name, index=join(folder, f"{name}.parquet"),
                        samples=stats.get("samples"))
            for name, stats in sorted(units.items()) if stats.get("tar")]


def tar_shard(uri: str) -> ShardSource:
    """A shard named by path: its sibling parquet and commit marker are used when present."""
    if _kind(uri) != pafs.FileType.File:
        raise ShardListError(f"shard not found: {uri}")
    name = _base(uri)[: -len(".tar")] if _base(uri).endswith(".tar") else _base(uri)
    index = join(_parent(uri), f"{name}.parquet")
    stats = Storage(_parent(uri)).read_marker(f"{name}{STATS_SUFFIX}")  # absent or unreadable: None
    samples = stats.get("samples") if stats is not None else None
    return ShardSource(tar=uri, name=name, index=index if _kind(index) == pafs.FileType.File else None,
                       samples=samples)


def _resolve_one(item: str) -> list[ShardSource]:
    """An OUT folder, one tar, or a brace pattern of tars."""
    expanded = expand_urls(item)
    if len(expanded) == 1 and _kind(expanded[0]) == pafs.FileType.Directory:
        return out_folder_shards(expanded[0])
    return [tar_shard(uri) for uri in expanded]


def map_shard(shard: ShardSource, maps: str) -> ShardSource:
    """Attach the companion map shard: `<shard folder>/maps/<name>/<shard file>` (or `maps` as a folder)."""
    folder = maps if ("/" in maps or os.sep in maps) else join(_parent(shard.tar), "maps", maps)
    companion = join(folder, _base(shard.tar))
    if _kind(companion) != pafs.FileType.File:
        raise ShardListError(f"map shard missing for {shard.tar}: {companion} (run `dfprep maps` with "
                             f"--method {maps} on that output first)")
    return ShardSource(shard.tar, shard.name, shard.index, shard.samples, companion)


def resolve_shards(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[ShardSource]:
    """Shard list from OUT folders, tar paths or brace patterns; a shard named twice is an error."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    shards = [shard for item in items for shard in _resolve_one(os.fspath(item))]
    seen = Counter(shard.tar for shard in shards)
    twice = [tar for tar, count in seen.items() if count > 1]
    if twice:
        raise ShardListError(f"shard listed more than once: {twice[0]}")
    if not shards:
        raise ShardListError(f"no shards found in {items}")
    return shards


def _as_set(value: Any) -> frozenset[Any] | None:
    """A filter value as a set: one value or a collection of values; None means no filter."""
    if value is None:
        return None
    if isinstance(value, (str, int)):
        return frozenset([value])
    return frozenset(value)


@dataclass(frozen=True)
class SampleFilter:
    """Which samples to keep, by split, label, method and dataset (each one value or several)."""

    split: frozenset[str] | None = None
    label: frozenset[int] | None = None
    method: frozenset[str] | None = None
    dataset: frozenset[str] | None = None

    @classmethod
    def of(cls, **values: Any) -> "SampleFilter":
        """Build from plain values (a string, an int or a collection each)."""
        return cls(**{field: _as_set(values.get(field)) for field in FILTER_FIELDS})

    def active(self) -> dict[str, frozenset[Any]]:
        """The fields that actually filter."""
        return {field: getattr(self, field) for field in FILTER_FIELDS if getattr(self, field) is not None}

    def keeps(self, meta: dict[str, Any]) -> bool:
        """Whether one sample's metadata passes every active field."""
        return all(meta.get(field) in wanted for field, wanted in self.active().items())

    def rules_out_name(self, shard: ShardSource) -> bool:
        """A split filter can drop `<split>-NNNNNN` units by name alone, without reading anything."""
        split = shard_split(shard.name)
        return self.split is not None and split is not None and split not in self.split


def index_label_counts(shard: ShardSource, wanted: SampleFilter) -> Counter[int] | None:
    """Label counts of the index rows that pass the filter; None when the shard has no index."""
    if shard.index is None:
        return None
    fields = ["label", *[f for f in wanted.active() if f != "label"]]
    filesystem, path = resolve_uri(shard.index)
    schema_names = set(pq.read_schema(path, filesystem=filesystem).names)
    if not set(fields) <= schema_names:
        return None  # an index without these columns cannot rule anything out
    table = pq.read_table(path, columns=fields, filesystem=filesystem)
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    rows = (dict(zip(columns, values)) for values in zip(*columns.values()))
    return Counter(int(row["label"]) for row in rows if wanted.keeps(row))


def select_shards(shards: Iterable[ShardSource], wanted: SampleFilter,
                  need_counts: bool = False) -> tuple[list[ShardSource], Counter[int] | None]:
    """Drop shards the filter rules out (by name, then by index); total the matching label counts when read.

    Indexes are only read when a filter is active or the counts are needed (class balancing).
    """
    kept: list[ShardSource] = []
    read_index = need_counts or bool(wanted.active())
    totals: Counter[int] | None = Counter() if read_index else None
    for shard in shards:
        if wanted.rules_out_name(shard):
            continue
        counts = index_label_counts(shard, wanted) if read_index else None
        if counts is None:
            totals = None
        elif totals is not None:
            totals += counts
        if counts is not None and sum(counts.values()) == 0:
            continue
        kept.append(shard)
    return kept, totals
