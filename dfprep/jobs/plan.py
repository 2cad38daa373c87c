"""The shard plan: videos grouped into numbered work units of one split, persisted before work starts."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from itertools import groupby
from typing import Any, Iterable

import pyarrow as pa

from dfprep.catalog.base import VideoRecord
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
    """One output shard's worth of videos (a fixed, persisted group of one split)."""

    name: str  # <split>-NNNNNN
    records: tuple[VideoRecord, ...]
    original_paths: tuple[str | None, ...]  # per record: the path of the original it is paired with


def unit_size(videos: int, workers: int, videos_per_shard: int | None) -> int:
    """Videos per unit: exactly what the user set, else at most MAX_VIDEOS_PER_SHARD and small enough for
    UNITS_PER_WORKER units per worker."""
    if videos_per_shard is not None:
        return videos_per_shard  # the user's shard size is kept as asked
    if workers <= 1:
        return MAX_VIDEOS_PER_SHARD  # one worker (or in-process): no parallelism to feed, full-size shards
    return max(1, min(MAX_VIDEOS_PER_SHARD, videos // (UNITS_PER_WORKER * workers)))


def _family_order(record: VideoRecord) -> tuple[str, str, int, str]:
    """Sort key: split, family, originals before fakes, id — so families stay together and in order."""
    return record.split, record.family_id, record.label, record.video_id


def build_units(records: Iterable[VideoRecord], videos_per_shard: int, first_number: dict[str, int] | None = None,
                originals: dict[str, str] | None = None) -> list[WorkUnit]:
    """Pack families into units of at most `videos_per_shard` videos, never mixing splits."""
    ordered = sorted(records, key=_family_order)
    originals = dict(originals or {})
    originals.update({r.video_id: r.path for r in ordered if r.video_id == r.family_id})
    numbers = dict(first_number or {})
    units: list[WorkUnit] = []
    for split, in_split in groupby(ordered, key=lambda r: r.split):
        current: list[VideoRecord] = []
        for _, family in groupby(in_split, key=lambda r: r.family_id):
            members = list(family)
            if current and len(current) + len(members) > videos_per_shard:
                units.append(_unit(split, numbers, current, originals))
                current = []
            for record in members:
                current.append(record)
                if len(current) == videos_per_shard:
                    units.append(_unit(split, numbers, current, originals))
                    current = []
        if current:
            units.append(_unit(split, numbers, current, originals))
    return units


def _unit(split: str, numbers: dict[str, int], records: list[VideoRecord], originals: dict[str, str]) -> WorkUnit:
    """Name the next unit of a split and pair each fake with its original's path."""
    number = numbers.get(split, 0)
    numbers[split] = number + 1
    paths = tuple(originals.get(r.family_id) if r.label == 1 else None for r in records)
    return WorkUnit(f"{split}-{number:06d}", tuple(records), paths)


def units_to_table(units: Iterable[WorkUnit]) -> pa.Table:
    """Flatten units into the persisted plan table (one row per video), column by column: the columns point at
    the records' own strings, where a dict per row would cost ~1 kB per video at the driver's peak."""
    columns: dict[str, list[Any]] = {name: [] for name in PLAN_SCHEMA.names}
    record_fields = [f.name for f in fields(VideoRecord)]
    for unit in units:
        for position, (record, original) in enumerate(zip(unit.records, unit.original_paths)):
            columns["unit"].append(unit.name)
            columns["position"].append(position)
            for name in record_fields:
                columns[name].append(getattr(record, name))
            columns["original_path"].append(original)
    return pa.Table.from_pydict(columns, schema=PLAN_SCHEMA)


def units_from_table(table: pa.Table) -> list[WorkUnit]:
    """Rebuild units from the persisted plan, in their original order."""
    record_fields = [f.name for f in fields(VideoRecord)]
    units: list[WorkUnit] = []
    rows = sorted(table.to_pylist(), key=lambda r: (r["unit"], r["position"]))
    for name, group in groupby(rows, key=lambda r: r["unit"]):
        members = list(group)
        records = tuple(VideoRecord(**{k: row[k] for k in record_fields}) for row in members)
        units.append(WorkUnit(name, records, tuple(row["original_path"] for row in members)))
    return units


def load_or_create_plan(storage: Storage, records: Iterable[VideoRecord], config: PipelineConfig,
                        overwrite: bool = False, extend: bool = False,
                        workers: int = 0) -> tuple[list[WorkUnit], str]:
    """Reuse the persisted plan (same config, same inputs), extend it with new videos, or create it.

    A new plan's units are sized for `workers` (see `unit_size`); a persisted plan keeps its units whatever
    the workers now, so a resumed run commits exactly the shards the first run planned.
    """
    records = list(records)
    meta = None if overwrite else _read_meta(storage)
    if meta is not None:
        if meta.get("config_hash") != config.output_hash():
            raise DfprepError(
                f"{storage.root} was made with a different config ({str(meta.get('config_hash'))[:12]}, this run "
                f"{config.output_hash()[:12]}): use --overwrite to start over, or another output folder")
        units = _read_units(storage)
        check_same_inputs(storage, meta, config, units, records)
        if extend:
            return _extend(storage, units, records, config, workers)
        return units, f"resuming the existing plan ({len(units)} shards)"
    units = build_units(records, unit_size(len(records), workers, config.output.videos_per_shard))
    _write_plan(storage, units, config)
    return units, f"new plan: {len(units)} shards"


def input_roots(config: PipelineConfig) -> list[str]:
    """The folders (or list files) a run reads its videos from, resolved: stamped into the plan."""
    roots = [config.dataset.root, getattr(config.dataset, "ffpp_root", None)]
    return [os.path.realpath(str(root)) for root in roots if root]


def check_same_inputs(storage: Storage, meta: dict[str, Any], config: PipelineConfig, units: list[WorkUnit],
                      records: list[VideoRecord]) -> None:
    """Refuse to resume a plan made from other inputs (another root or dataset), like a changed config."""
    planned = meta.get("inputs") or {}
    current = {"dataset": config.dataset.name, "roots": input_roots(config)}
    if planned.get("roots") and current["roots"]:
        changed = planned != current
    else:  # roots unknown (library use, or an older plan): another input shares no video file with the plan
        known = {r.path for unit in units for r in unit.records}
        changed = bool(known) and bool(records) and not known & {r.path for r in records}
    if changed:
        was = f"{planned['dataset']} {', '.join(planned['roots'])}" if planned.get("roots") else "other videos"
        now = f"{current['dataset']} {', '.join(current['roots'])}" if current["roots"] else "other videos"
        raise DfprepError(f"{storage.root} was planned from {was}; this run reads {now}: use the same input, "
                          "--overwrite to start over, or another output folder")


def catalog_drift(units: list[WorkUnit], records: Iterable[VideoRecord], root: str) -> list[str]:
    """Warnings when the catalog and the plan disagree: videos found but not planned, planned but gone."""
    found = {r.video_id: r for r in records}
    planned = {r.video_id: r for unit in units for r in unit.records}
    unplanned = [v for v in found if v not in planned]
    gone = [v for v, r in planned.items() if r.status == "found" and (v not in found or found[v].status != "found")]
    warnings = []
    if unplanned:
        warnings.append(f"{len(unplanned)} video(s) found under {root} are not in this output's plan (first: "
                        f"{unplanned[0]}): rerun with --extend to add them")
    if gone:
        warnings.append(f"{len(gone)} planned video(s) are no longer found under {root} (first: {gone[0]}); "
                        "their rows are kept")
    return warnings


def _extend(storage: Storage, units: list[WorkUnit], records: Iterable[VideoRecord],
            config: PipelineConfig, workers: int) -> tuple[list[WorkUnit], str]:
    """Append newly found videos as new units, numbered after the existing ones."""
    known = {r.video_id for unit in units for r in unit.records}
    fresh = [r for r in records if r.video_id not in known]
    numbers: dict[str, int] = {}
    for unit in units:
        split, number = unit.name.rsplit("-", 1)
        numbers[split] = max(numbers.get(split, 0), int(number) + 1)
    originals = {r.video_id: r.path for unit in units for r in unit.records if r.video_id == r.family_id}
    added = build_units(fresh, unit_size(len(fresh), workers, config.output.videos_per_shard), numbers, originals)
    _write_plan(storage, units + added, config)
    return units + added, f"extended the plan: {len(fresh)} new videos in {len(added)} new shards"


def _read_meta(storage: Storage) -> dict[str, Any] | None:
    """The persisted plan's metadata, or None when this is a fresh output folder (or an unfinished plan)."""
    if not storage.exists(PLAN_META) or not storage.exists(PLAN_TABLE):
        return None
    meta = storage.read_marker(PLAN_META)
    if meta is None and any(name.endswith(STATS_SUFFIX) for name in storage.listdir()):
        raise DfprepError(f"{storage.path(PLAN_META)} is damaged and shards were already committed from it: "
                          "use --overwrite to start over, or another output folder")
    return meta


def _read_units(storage: Storage) -> list[WorkUnit]:
    """The persisted plan's units; a damaged plan table is a one-line error."""
    try:
        return units_from_table(storage.read_table(PLAN_TABLE))
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        raise DfprepError(f"{storage.path(PLAN_TABLE)} is damaged ({exc.__class__.__name__}): use --overwrite to "
                          "start over, or another output folder") from None


def _write_plan(storage: Storage, units: list[WorkUnit], config: PipelineConfig) -> None:
    """Persist the plan table, then its metadata (the metadata marks the plan as complete)."""
    storage.makedirs()
    storage.write_table(PLAN_TABLE, units_to_table(units))
    storage.write_json(PLAN_META, {"config_hash": config.output_hash(), "config": config.to_dict(),
                                   "inputs": {"dataset": config.dataset.name, "roots": input_roots(config)},
                                   "units": len(units), "videos": sum(len(u.records) for u in units)})
