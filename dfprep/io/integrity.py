"""Is an output whole? The cheap checks every reader runs, and un-committing a damaged shard.

A commit marker (`<shard>_stats.json`, format 2) records the size and sha256 of its tar and parquet, and
every sample's json records the crc32 of its other members. The cheap check (one folder listing plus the
small JSON/parquet indexes, never a tar) finds a planned shard without marker, a tar or parquet missing or of
another size than its marker says, an unreadable marker, a `dataset.json` that says incomplete: `stats`,
`evaluate`, `train`, `maps` and an `extract` rerun use it. `dfprep verify` (dfprep.inspect.verify) reads
every tar on top of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dfprep.errors import DfprepError, one_line
from dfprep.io.layout import DATASET_JSON, PLAN_TABLE, STATS_SUFFIX, UNIT_SUFFIXES, VIDEOS_TABLE
from dfprep.io.storage import Storage


@dataclass(frozen=True)
class Damage:
    """One shard (or the output itself) that is not as its commit promised, and why, in one line."""

    shard: str  # e.g. train-000003, maps/landmarks/train-000003, or "" for the output as a whole
    reason: str
    kind: str = "damaged"  # damaged: a committed shard is not what its commit published; incomplete: not done yet

    def line(self) -> str:
        """`shard: reason`, the form every command prints."""
        return f"{self.shard}: {self.reason}" if self.shard else self.reason


# ---------------------------------------------------------------- cheap checks (no tar is opened)


def file_sizes(storage: Storage, folder: str = "", recursive: bool = False) -> dict[str, int]:
    """Relative file name → size for the files in the output folder (or a sub-folder), from one listing call
    (cheap on object stores); `recursive` adds the files of every folder below it."""
    base = storage.path(folder) if folder else storage.root
    selector = pafs.FileSelector(base, allow_not_found=True, recursive=recursive)
    infos = storage.fs.get_file_info(selector)
    return {info.path[len(base) + 1:]: info.size or 0 for info in infos if info.type == pafs.FileType.File}


MARKER_CHECK_KEYS = frozenset({"tar", "tar_bytes", "parquet_bytes", "samples"})  # what marker_problem reads


class KeptMarker(dict):  # type: ignore[type-arg]
    """A commit marker cut to the keys its reader declared: asking for any other key is a bug, so it raises
    instead of quietly giving a default."""

    __slots__ = ("kept",)

    def __init__(self, stats: dict[str, Any], kept: frozenset[str]):
        super().__init__((key, value) for key, value in stats.items() if key in kept)
        self.kept = kept

    def __getitem__(self, key: str) -> Any:
        self._declared(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._declared(key)
        return super().get(key, default)

    def _declared(self, key: str) -> None:
        if key not in self.kept:
            raise KeyError(f"commit-marker key {key!r} was not kept (kept: {', '.join(sorted(self.kept))}): "
                           "declare it in the job's marker_keys")


def read_markers(storage: Storage, sizes: dict[str, int], folder: str = "",
                 keep: frozenset[str] | None = None) -> tuple[dict[str, dict], dict[str, str]]:
    """Every commit marker of a folder: (unit → stats, only the keys in `keep` when given; unit → why it cannot be
    read)."""
    markers: dict[str, dict] = {}
    unreadable: dict[str, str] = {}
    for name in sorted(n for n in sizes if n.endswith(STATS_SUFFIX)):
        unit = name[: -len(STATS_SUFFIX)]
        try:
            stats = json.loads(storage.read_bytes(f"{folder}/{name}" if folder else name))
        except (OSError, ValueError, RecursionError) as exc:
            unreadable[unit] = f"commit marker unreadable ({one_line(exc, fallback=type(exc).__name__)})"
            continue
        if isinstance(stats, dict):
            markers[unit] = stats if keep is None else KeptMarker(stats, keep)
        else:
            unreadable[unit] = "commit marker is not a JSON object"
    return markers, unreadable


def marker_problem(unit: str, stats: dict[str, Any], sizes: dict[str, int]) -> str | None:
    """Why a committed unit's files disagree with its marker (sizes and presence only), or None."""
    tar = stats.get("tar")
    if not tar:
        return "commit marker promises samples but names no tar" if stats.get("samples") else None
    if tar != f"{unit}.tar":
        return f"commit marker names an unexpected tar {tar!r}"
    if tar not in sizes:
        return f"{tar} is missing although the shard is committed"
    if isinstance(stats.get("tar_bytes"), int) and sizes[tar] != stats["tar_bytes"]:
        return f"{tar} has {sizes[tar]} bytes, its commit marker says {stats['tar_bytes']} (truncated or replaced)"
    index = f"{unit}.parquet"
    if index not in sizes:
        return f"{index} (the shard's index) is missing"
    if isinstance(stats.get("parquet_bytes"), int) and sizes[index] != stats["parquet_bytes"]:
        return f"{index} has {sizes[index]} bytes, its commit marker says {stats['parquet_bytes']}"
    return None


def damaged_units(storage: Storage, committed: dict[str, dict[str, Any]], folder: str = "") -> dict[str, str]:
    """Committed units whose tar or index is missing or of the wrong size (cheap: one listing): unit → reason.

    `extract` and `maps` reruns un-commit and redo these, so a damaged output repairs itself by rerunning.
    """
    sizes = file_sizes(storage, folder)
    problems = {unit: marker_problem(unit, stats, sizes) for unit, stats in committed.items()}
    return {unit: reason for unit, reason in problems.items() if reason is not None}


def parquet_table(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """A parquet file held in memory, read on this thread.

    With pyarrow 26, `dfprep verify` processes that read indexes on Arrow's thread pool aborted at exit in
    about 1 run of 25 ("terminate called without an active exception", exit status 134 after a clean
    report); single-threaded reads of these small indexes never did (90 runs).
    """
    return pq.ParquetFile(pa.BufferReader(data)).read(columns=columns, use_threads=False)


def planned_units(storage: Storage) -> list[str]:
    """The units the persisted plan promises (from plan.parquet, else dataset.json's shard list)."""
    if storage.exists(PLAN_TABLE):
        try:
            table = parquet_table(storage.read_bytes(PLAN_TABLE), ["unit"])
            return sorted(set(table.column("unit").to_pylist()))
        except (OSError, pa.ArrowException, KeyError):
            return []
    dataset = _dataset_json(storage)
    shards = dataset.get("shards") if isinstance(dataset, dict) else None
    return sorted(s for s in shards if isinstance(s, str)) if isinstance(shards, list) else []


def _dataset_json(storage: Storage) -> dict[str, Any] | None:
    """dataset.json as a dict; None when absent or unreadable."""
    if not storage.exists(DATASET_JSON):
        return None
    try:
        data = json.loads(storage.read_bytes(DATASET_JSON))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


# What to do when an output-level table is unreadable: the videos index is rebuilt from the commit markers
# by every extract run; the persisted plan is the only record of which video belongs to which shard.
_TABLE_ADVICE = {VIDEOS_TABLE: "rerun the extract command to rebuild it",
                 PLAN_TABLE: "extract cannot resume this output: rerun it with --overwrite to start over"}


def table_problem(storage: Storage, name: str) -> str | None:
    """Why an output-level parquet (videos.parquet, plan.parquet) cannot be read, from its footer alone."""
    if not storage.exists(name):
        return None
    try:
        with storage.fs.open_input_file(storage.path(name)) as handle:
            pq.ParquetFile(handle).metadata  # noqa: B018 - reading the footer is the check
    except (OSError, pa.ArrowException) as exc:
        return f"{name} is unreadable ({one_line(exc, limit=80)}); {_TABLE_ADVICE[name]}"
    return None


def output_problems(out: str | Storage) -> list[Damage]:
    """The cheap check of a whole face output: what keeps it from being complete and intact ([] when whole)."""
    storage = out if isinstance(out, Storage) else Storage(out)
    sizes = file_sizes(storage)
    markers, unreadable = read_markers(storage, sizes, keep=MARKER_CHECK_KEYS)  # not the per-video rows
    problems = [Damage(unit, reason) for unit, reason in unreadable.items()]
    problems += [Damage(unit, reason) for unit, reason in damaged_units(storage, markers).items()]
    missing = [u for u in planned_units(storage) if u not in markers and u not in unreadable]
    problems += [Damage(unit, "planned but not committed (rerun the extract command to finish it)", "incomplete")
                 for unit in missing]
    problems += [Damage("", reason) for reason in (table_problem(storage, n) for n in (VIDEOS_TABLE, PLAN_TABLE)) if reason]
    dataset = _dataset_json(storage)
    if dataset is None:
        problems.append(Damage("", f"no readable {DATASET_JSON}: the extract has not finished", "incomplete"))
    elif not dataset.get("complete") and not missing:
        problems.append(Damage("", f"{DATASET_JSON} says the output is incomplete", "incomplete"))
    return problems


def summary_line(problems: list[Damage]) -> str:
    """`3 problems (first: train-000001: …)`: one line for readers that refuse or flag an output."""
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return f"{count} (first: {problems[0].line()})" if problems else "no problems"


def require_complete(out: str, allow_incomplete: bool = False) -> None:
    """Refuse to read an incomplete or damaged output (one line naming what is wrong), unless allowed."""
    problems = output_problems(out)
    if problems and not allow_incomplete:
        raise DfprepError(f"{out} is incomplete or damaged: {summary_line(problems)}; run `dfprep verify {out}`, "
                          "rerun the extract command to repair it, or pass --allow-incomplete")


def uncommit(storage: Storage, shard: str) -> list[str]:
    """Un-commit one damaged shard (its marker first, then tar and index) so the next rerun redoes it."""
    removed = []
    for suffix in UNIT_SUFFIXES:
        if storage.exists(f"{shard}{suffix}"):
            storage.delete(f"{shard}{suffix}")
            removed.append(f"{shard}{suffix}")
    return removed
