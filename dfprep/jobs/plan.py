"""The shard plan: videos grouped into numbered work units of one split, persisted before work starts.

The plan is columnar end to end: the catalog (dfprep.catalog.table) is sorted and cut into units as Arrow
columns; once written, the driver keeps only the units (name, first row, videos) and their rows wait in an
unnamed file, read back as each unit is handed to a worker (PlanRows). So the driver holds no row, record or
string per video while the run goes on (README, performance: driver memory).
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dfprep.catalog.base import VideoRecord
from dfprep.catalog.table import CATALOG_SCHEMA, catalog_table, rows_ordered
from dfprep.config import PipelineConfig
from dfprep.errors import DfprepError
from dfprep.io.layout import PLAN_META, PLAN_SCHEMA, PLAN_TABLE, STATS_SUFFIX
from dfprep.io.storage import Storage

# Work units per worker a plan aims for when the user did not set `output.videos_per_shard`: a free worker
# always finds a unit waiting, and the last unit to finish (the run's tail) is a small share of the run.
# Shards shrink below MAX_VIDEOS_PER_SHARD only when the input is too small to give every worker this many.
UNITS_PER_WORKER = 4
MAX_VIDEOS_PER_SHARD = 48  # ~1.5k samples at 32 frames


@dataclass(frozen=True)
class WorkUnit:
    """One output shard's worth of videos, as its worker runs it (records built from the plan's rows)."""

    name: str  # <split>-NNNNNN
    records: tuple[VideoRecord, ...]
    original_paths: tuple[str | None, ...]  # per record: the path of the original it is paired with


@dataclass(frozen=True)
class PlannedUnit:
    """A unit as the driver keeps it: its name and where its rows lie in the plan table."""

    name: str
    start: int  # its first row in PlanRows.table
    videos: int


class PlanRows:
    """A plan as the driver holds it: its units (name, first row, videos) in memory and their rows in an unnamed
    file, read back one unit at a time, so a run holds no row per video while it goes on."""

    def __init__(self, table: pa.Table, warnings: Sequence[str] = (), folder: str | None = None):
        self.warnings = list(warnings)  # where the catalog and a resumed plan disagree (catalog_drift)
        if not rows_ordered(table, ["unit", "position"]):  # a plan as written is: no sorted copy then
            table = table.sort_by([("unit", "ascending"), ("position", "ascending")])
        starts = unit_starts(table.column("unit"))
        ends = [*starts[1:], table.num_rows]
        names = table.column("unit").take(pa.array(starts, pa.int64())).to_pylist()
        self.units = [PlannedUnit(name, start, end - start) for name, start, end in zip(names, starts, ends)]
        self._batch = {unit.name: number for number, unit in enumerate(self.units)}
        self._lock = threading.Lock()  # video threads load units concurrently; one reader, one file position
        # an unnamed file in `folder` (a local output: its disk, not /tmp's), else the system's temporary folder;
        # it has no name to leave behind, even when the process is killed. One record batch per unit.
        self._spill = tempfile.TemporaryFile(prefix="dfprep-plan-", dir=folder)
        with pa.ipc.new_file(self._spill, PLAN_SCHEMA) as writer:
            for unit in self.units:
                writer.write_batch(table.slice(unit.start, unit.videos).combine_chunks().to_batches()[0])
        self._reader = pa.ipc.open_file(self._spill)

    def rows(self, unit: PlannedUnit) -> pa.RecordBatch:
        """The unit's rows, read back from the plan's file."""
        with self._lock:
            return self._reader.get_batch(self._batch[unit.name])

    def load(self, unit: PlannedUnit) -> WorkUnit:
        """The unit's records, built now (right before a worker gets it)."""
        rows = self.rows(unit).to_pylist()
        records = tuple(VideoRecord(**{name: row[name] for name in CATALOG_SCHEMA.names}) for row in rows)
        return WorkUnit(unit.name, records, tuple(row["original_path"] for row in rows))

    def paths(self, unit: PlannedUnit) -> list[str]:
        """The unit's video paths."""
        return self.rows(unit).column("path").to_pylist()


def unit_starts(names: pa.ChunkedArray | pa.Array) -> list[int]:
    """The rows where a run of equal names begins (the first row of each unit)."""
    if len(names) == 0:
        return []
    changed = pc.not_equal(names[1:], names[:-1]).to_numpy(zero_copy_only=False)
    return [0, *(np.flatnonzero(changed) + 1).tolist()]


def shards(count: int, adjective: str = "") -> str:
    """"1 shard", "8 shards": the plan's note reads as a sentence."""
    return f"{count} {adjective}shard{'' if count == 1 else 's'}"


def unit_size(videos: int, workers: int, videos_per_shard: int | None) -> int:
    """Videos per unit: exactly what the user set, else at most MAX_VIDEOS_PER_SHARD and small enough for
    UNITS_PER_WORKER units per worker."""
    if videos_per_shard is not None:
        return videos_per_shard  # the user's shard size is kept as asked
    if workers <= 1:
        return MAX_VIDEOS_PER_SHARD  # one worker (or in-process): no parallelism to feed, full-size shards
    return max(1, min(MAX_VIDEOS_PER_SHARD, videos // (UNITS_PER_WORKER * workers)))


def unit_ends(split_starts: list[int], family_starts: list[int], rows: int, videos_per_shard: int) -> list[int]:
    """Where units end, over rows in family order: families packed into units of at most `videos_per_shard`
    videos (a family larger than that is cut), a unit never spanning two splits."""
    new_split = set(split_starts)
    ends: list[int] = []
    begun = 0  # first row of the unit being filled
    for start, end in zip(family_starts, [*family_starts[1:], rows]):
        if start > begun and (start in new_split or end - begun > videos_per_shard):
            ends.append(start)  # a new split, or the family does not fit: close the unit
            begun = start
        while end - begun >= videos_per_shard:
            begun += videos_per_shard
            ends.append(begun)
    if begun < rows:
        ends.append(rows)
    return ends


def plan_table(catalog: pa.Table, videos_per_shard: int, first_number: dict[str, int] | None = None,
               originals: pa.Table | None = None) -> pa.Table:
    """Pack the families of a catalog in family order (catalog_table's) into named units; each fake gets its
    original's path, looked up among the catalog's originals, then `originals` (video_id, path) of an earlier
    plan. The plan shares the catalog's columns and adds unit, position and original_path."""
    ordered = catalog.combine_chunks()
    rows = ordered.num_rows
    split_starts = unit_starts(ordered.column("split"))
    family_starts = sorted(set(split_starts) | set(unit_starts(ordered.column("family_id"))))
    ends = unit_ends(split_starts, family_starts, rows, videos_per_shard)
    starts = [0, *ends[:-1]] if ends else []
    numbers = dict(first_number or {})
    names = []
    for split in ordered.column("split").take(pa.array(starts, pa.int64())).to_pylist():
        names.append(f"{split}-{numbers.get(split, 0):06d}")
        numbers[split] = numbers.get(split, 0) + 1
    lengths = np.diff([0, *ends])
    columns: dict[str, Any] = {
        "unit": pa.array(names, pa.string()).take(pa.array(np.repeat(np.arange(len(names)), lengths))),
        "position": pa.array(np.arange(rows) - np.repeat(np.array(starts, dtype=np.int64), lengths), pa.int64()),
        **{name: ordered.column(name) for name in CATALOG_SCHEMA.names},
        "original_path": original_paths(ordered, originals),
    }
    return pa.table(columns, schema=PLAN_SCHEMA)


def original_paths(ordered: pa.Table, earlier: pa.Table | None) -> pa.ChunkedArray | pa.Array:
    """Per row: the path of the original a fake derives from (null for originals and for fakes without one)."""
    is_original = pc.equal(ordered.column("video_id"), ordered.column("family_id"))
    known = [ordered.filter(is_original).select(["video_id", "path"])]
    if earlier is not None:
        known.append(earlier.select(["video_id", "path"]).cast(known[0].schema))
    originals = pa.concat_tables(known).combine_chunks()  # this catalog's originals win over an earlier plan's
    found = pc.index_in(ordered.column("family_id"), value_set=originals.column("video_id").combine_chunks())
    paths = pc.take(originals.column("path").combine_chunks(), found)
    return pc.if_else(pc.equal(ordered.column("label"), 1), paths, pa.scalar(None, pa.string()))


def build_units(records: Any, videos_per_shard: int) -> list[WorkUnit]:
    """The units a new plan makes of these records, each with its records (for tests and small tools)."""
    plan = PlanRows(plan_table(catalog_table(records), videos_per_shard))
    return [plan.load(unit) for unit in plan.units]


def load_or_create_plan(storage: Storage, catalog: pa.Table | Iterable[VideoRecord], config: PipelineConfig,
                        overwrite: bool = False, extend: bool = False, workers: int = 0) -> tuple[PlanRows, str]:
    """Reuse the persisted plan (same config, same inputs), extend it with new videos, or create it.

    A new plan's units are sized for `workers` (see `unit_size`); a persisted plan keeps its units whatever
    the workers now, so a resumed run commits exactly the shards the first run planned.
    """
    if not isinstance(catalog, pa.Table):
        catalog = catalog_table(catalog)  # records (library use, tests); a run passes its catalog table
    meta = None if overwrite else _read_meta(storage)
    if meta is None:
        size = unit_size(catalog.num_rows, workers, config.output.videos_per_shard)
        planned = plan_table(catalog, size)
        _write_plan(storage, planned, config)
        plan = PlanRows(planned, folder=spill_folder(storage))  # the catalog's own plan: nothing to disagree about
        return plan, f"new plan: {shards(len(plan.units))}"
    if meta.get("config_hash") != config.output_hash():
        raise DfprepError(
            f"{storage.root} was made with a different config ({str(meta.get('config_hash'))[:12]}, this run "
            f"{config.output_hash()[:12]}): use --overwrite to start over, or another output folder")
    planned = _read_plan(storage)
    check_same_inputs(storage, meta, config, planned, catalog)
    if extend:
        before = len(unit_starts(planned.column("unit")))
        planned, fresh = _extend(planned, catalog, config, workers)
        _write_plan(storage, planned, config)
        plan = PlanRows(planned, catalog_drift(planned, catalog, config), spill_folder(storage))
        return plan, f"extended the plan: {fresh} new videos in {shards(len(plan.units) - before, 'new ')}"
    plan = PlanRows(planned, catalog_drift(planned, catalog, config), spill_folder(storage))
    return plan, f"resuming the existing plan ({shards(len(plan.units))})"


def spill_folder(storage: Storage) -> str | None:
    """Where a plan's rows wait while it runs: a local output's own folder, else the system's temporary folder."""
    return storage.root if storage.is_local else None


def input_roots(config: PipelineConfig) -> list[str]:
    """The folders (or list files) a run reads its videos from, resolved: stamped into the plan."""
    roots = [config.dataset.root, getattr(config.dataset, "ffpp_root", None)]
    return [os.path.realpath(str(root)) for root in roots if root]


def check_same_inputs(storage: Storage, meta: dict[str, Any], config: PipelineConfig, planned: pa.Table,
                      catalog: pa.Table) -> None:
    """Refuse to resume a plan made from other inputs (another root or dataset), like a changed config."""
    stamped = meta.get("inputs") or {}
    current = {"dataset": config.dataset.name, "roots": input_roots(config)}
    if stamped.get("roots") and current["roots"]:
        changed = stamped != current
    else:  # roots unknown (library use, or an older plan): another input shares no video file with the plan
        shared = pc.is_in(catalog.column("path"), value_set=planned.column("path").combine_chunks())
        changed = planned.num_rows > 0 and catalog.num_rows > 0 and not pc.any(shared).as_py()
    if changed:
        was = f"{stamped['dataset']} {', '.join(stamped['roots'])}" if stamped.get("roots") else "other videos"
        now = f"{current['dataset']} {', '.join(current['roots'])}" if current["roots"] else "other videos"
        raise DfprepError(f"{storage.root} was planned from {was}; this run reads {now}: use the same input, "
                          "--overwrite to start over, or another output folder")


def catalog_drift(planned: pa.Table, catalog: pa.Table, config: PipelineConfig) -> list[str]:
    """Warnings when the catalog and a persisted plan disagree: videos found but not planned, planned but gone."""
    root = ", ".join(input_roots(config)) or "the input"
    found_ids = catalog.column("video_id")
    unplanned = pc.unique(found_ids.filter(pc.invert(pc.is_in(found_ids, value_set=planned.column("video_id")
                                                                .combine_chunks()))))
    found_ok = catalog.filter(pc.equal(catalog.column("status"), "found")).column("video_id").combine_chunks()
    planned_ok = planned.filter(pc.equal(planned.column("status"), "found")).column("video_id")
    gone = pc.unique(planned_ok.filter(pc.invert(pc.is_in(planned_ok, value_set=found_ok))))
    warnings = []
    if len(unplanned):
        warnings.append(f"{len(unplanned)} video(s) found under {root} are not in this output's plan (first: "
                        f"{unplanned[0].as_py()}): rerun with --extend to add them")
    if len(gone):
        warnings.append(f"{len(gone)} planned video(s) are no longer found under {root} (first: {gone[0].as_py()}); "
                        "their rows are kept")
    return warnings


def _extend(planned: pa.Table, catalog: pa.Table, config: PipelineConfig, workers: int) -> tuple[pa.Table, int]:
    """The plan with newly found videos appended as new units, numbered after the existing ones; and how many."""
    fresh = catalog.filter(pc.invert(pc.is_in(catalog.column("video_id"),
                                              value_set=planned.column("video_id").combine_chunks())))
    numbers: dict[str, int] = {}
    for unit in pc.unique(planned.column("unit")).to_pylist():
        split, number = unit.rsplit("-", 1)
        numbers[split] = max(numbers.get(split, 0), int(number) + 1)
    originals = planned.filter(pc.equal(planned.column("video_id"), planned.column("family_id")))
    size = unit_size(fresh.num_rows, workers, config.output.videos_per_shard)
    extended = pa.concat_tables([planned, plan_table(fresh, size, numbers, originals)])
    return extended.sort_by([("unit", "ascending"), ("position", "ascending")]), fresh.num_rows


def _read_meta(storage: Storage) -> dict[str, Any] | None:
    """The persisted plan's metadata, or None when this is a fresh output folder (or an unfinished plan)."""
    if not storage.exists(PLAN_META) or not storage.exists(PLAN_TABLE):
        return None
    meta = storage.read_marker(PLAN_META)
    if meta is None and any(name.endswith(STATS_SUFFIX) for name in storage.listdir()):
        raise DfprepError(f"{storage.path(PLAN_META)} is damaged and shards were already committed from it: "
                          "use --overwrite to start over, or another output folder")
    return meta


def read_plan_table(storage: Storage) -> pa.Table:
    """The persisted plan table over the contract's schema (OSError, ValueError, KeyError or ArrowException when
    it is damaged)."""
    return storage.read_table(PLAN_TABLE).select(PLAN_SCHEMA.names).cast(PLAN_SCHEMA)


def _read_plan(storage: Storage) -> pa.Table:
    """The persisted plan table; a damaged one is a one-line error."""
    try:
        return read_plan_table(storage)
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        raise DfprepError(f"{storage.path(PLAN_TABLE)} is damaged ({exc.__class__.__name__}): use --overwrite to "
                          "start over, or another output folder") from None


def _write_plan(storage: Storage, planned: pa.Table, config: PipelineConfig) -> None:
    """Persist the plan table, then its metadata (the metadata marks the plan as complete)."""
    storage.makedirs()
    storage.write_table(PLAN_TABLE, planned)
    storage.write_json(PLAN_META, {"config_hash": config.output_hash(), "config": config.to_dict(),
                                   "inputs": {"dataset": config.dataset.name, "roots": input_roots(config)},
                                   "units": len(unit_starts(planned.column("unit"))), "videos": planned.num_rows})
