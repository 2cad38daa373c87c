"""Run an extraction: plan, skip committed shards, process the rest (in-process or on Ray), index, summarise."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import cv2
import pyarrow as pa

from dfprep import __version__
from dfprep.catalog.base import VideoRecord
from dfprep.config import PipelineConfig
from dfprep.errors import DfprepError, normalised_reason
from dfprep.io.integrity import damaged_units, uncommit
from dfprep.io.layout import (ATTEMPTS_DIR, DATASET_JSON, INDEX_FILES, OWNERSHIP_FILE, PLAN_META, PLAN_TABLE,
                              TEMP_SUFFIX, VIDEOS_TABLE, unit_files)
from dfprep.io.lock import OutputLock, new_run_id
from dfprep.io.ownership import check_claimable, check_separate, claim, open_output, output_errors
from dfprep.io.shards import ShardWriter, committed_units, remove_stale_staging, remove_uncommitted
from dfprep.io.storage import Storage
from dfprep.jobs.extract import ExtractionModels, VideoExtractor, VideoResult, base_row
from dfprep.jobs.maps import cam_next_steps, inline_settings
from dfprep.jobs.plan import WorkUnit, catalog_drift, input_roots, load_or_create_plan, units_from_table
from dfprep.runner import faults
from dfprep.runner.guard import (AttemptLog, RunContext, Watchdog, hard_limit, marker_unit, recording_crashes,
                                 settle_interrupted)
from dfprep.runner.maps import check_inline_maps, maps_run
from dfprep.runner.pool import ActorPool, ray_version, worker_count
from dfprep.runner.progress import Progress

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class RunReport:
    """What a run did: the numbers its summary table shows."""

    output: str
    note: str
    units_total: int
    units_skipped: int
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    videos: int = 0
    faces: int = 0
    disk_bytes: int = 0
    seconds: float = 0.0
    timings: Counter[str] = field(default_factory=Counter)
    removed: list[str] = field(default_factory=list)
    maps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the catalog and the plan disagree
    charged: list[str] = field(default_factory=list)  # videos charged a crash of the previous run


@dataclass
class Prepared:
    """What `prepare` found: the plan, the valid commits, what it removed and what the user should know."""

    units: list[WorkUnit]
    committed: dict[str, dict[str, Any]]
    removed: list[str]
    note: str
    warnings: list[str]
    charged: list[str]


def process_unit(unit: WorkUnit, extractor: VideoExtractor, storage: Storage, progress: ProgressFn | None = None,
                 context: RunContext | None = None) -> dict[str, Any]:
    """Extract every video of a unit into one shard and commit it (stamped with the config hash)."""
    started = time.monotonic()
    context = context or RunContext(new_run_id())
    writer = ShardWriter(storage, unit.name)
    try:
        attempts = AttemptLog(storage, unit.name, context)
        rows: list[dict[str, Any]] = []
        timings: Counter[str] = Counter()
        for position, (record, original) in enumerate(zip(unit.records, unit.original_paths)):
            result = _guarded_extract(extractor, unit.name, record, original, writer, attempts, position, context)
            result.row["shard"] = unit.name if result.row["faces_written"] else ""
            rows.append(result.row)
            timings.update(result.timings)
            if progress is not None:
                progress(result.row)
        stats = {"unit": unit.name, "videos": rows, "seconds": round(time.monotonic() - started, 3),
                 "statuses": dict(Counter(r["status"] for r in rows)), "timings": dict(timings),
                 "faces": sum(r["faces_written"] for r in rows), "config_hash": extractor.config.output_hash()}
        committed = writer.commit(stats)
        attempts.clear()
        return committed
    except BaseException:
        writer.discard()
        raise


def _guarded_extract(extractor: VideoExtractor, unit: str, record: VideoRecord, original: str | None,
                     writer: ShardWriter, attempts: AttemptLog, position: int, context: RunContext) -> VideoResult:
    """One video marked in progress, under its watchdog; the mark is released however the video ends."""
    timeout_s = extractor.config.sampling.video_timeout_s
    skip = attempts.begin(position, timeout_s)
    if skip is not None:
        return VideoResult({**base_row(record), "status": skip[0], "error": skip[1]}, {})
    try:
        with Watchdog(attempts, position, hard_limit(timeout_s), record.video_id, context.exit_on_hang):
            faults.reached(unit, position)  # reliability tests only ($DFPREP_FAULT); nothing otherwise
            return extractor.extract(record, original, writer.add)
    finally:
        attempts.finish(position)


class ExtractWorker:
    """Ray actor body: holds a VideoExtractor and reports per-video progress to the queue actor."""

    def __init__(self, config: PipelineConfig, models: ExtractionModels):
        cv2.setNumThreads(1)
        remove_stale_staging()  # a restarted actor (or a killed run) may have left its staging folder
        self.extractor = VideoExtractor(config, models, decode_threads=config.ray.decode_threads)

    def run_unit(self, unit: WorkUnit, storage: Storage, context: RunContext, queue: Any) -> dict[str, Any]:
        """Process and commit one unit; each finished video is announced as (unit, position, row)."""
        positions = iter(range(len(unit.records)))
        report = lambda row: queue.put_nowait.remote((unit.name, next(positions), row))  # noqa: E731
        return process_unit(unit, self.extractor, storage, report, context)


def clean_output(storage: Storage) -> list[str]:
    """--overwrite: delete the files this folder's plan says dfprep wrote (never anything else)."""
    units = _persisted_unit_names(storage)
    present = set(storage.listdir())
    names = [name for base in INDEX_FILES for name in (base, f"{base}{TEMP_SUFFIX}")]
    names += [name for unit in units for name in unit_files(unit)]
    removed = [name for name in names if name in present]
    removed += [f"{ATTEMPTS_DIR}/{name}" for name in storage.listdir(ATTEMPTS_DIR) if marker_unit(name) in units]
    for name in removed:
        storage.delete(name)
    return removed


def _persisted_unit_names(storage: Storage) -> set[str]:
    """Unit names of the plan persisted in the folder (none when there is no readable plan)."""
    try:
        return {unit.name for unit in units_from_table(storage.read_table(PLAN_TABLE))}
    except (OSError, ValueError, KeyError):
        return set()


def is_earlier_output(storage: Storage) -> bool:
    """A folder written by a dfprep that predates the ownership file: its plan says so."""
    meta = storage.read_marker(PLAN_META) if storage.exists(PLAN_TABLE) else None
    return meta is not None and "config_hash" in meta


def prepare(storage: Storage, records: list[VideoRecord], config: PipelineConfig, overwrite: bool, extend: bool,
            run_id: str) -> Prepared:
    """Settle the last run's leftovers, plan (or reuse the plan), keep valid commits, remove orphans."""
    removed = clean_output(storage) if overwrite else []
    storage.makedirs(ATTEMPTS_DIR)
    charged = settle_interrupted(storage, run_id)
    units, note = load_or_create_plan(storage, records, config, overwrite=overwrite, extend=extend)
    root = ", ".join(input_roots(config)) or "the input"
    committed = valid_commits(storage, config.output_hash())
    for unit, reason in damaged_units(storage, committed).items():  # redo damaged shards: un-commit them first
        removed += uncommit(storage, unit)
        note += f"; redoing damaged shard {unit} ({reason})"
        del committed[unit]
    removed += remove_uncommitted(storage, [u.name for u in units], set(committed))
    removed += _remove_index_temporaries(storage)
    return Prepared(units, committed, removed, note, catalog_drift(units, records, root), charged)


def valid_commits(storage: Storage, config_hash: str) -> dict[str, dict[str, Any]]:
    """Commit markers stamped with this output's config hash: another config's are not commits here (a marker
    without a stamp was written before stamps existed, under the plan's config, and stays a commit)."""
    return {unit: stats for unit, stats in committed_units(storage).items()
            if stats.get("config_hash", config_hash) == config_hash}


def _remove_index_temporaries(storage: Storage) -> list[str]:
    """Temporary index files are never valid after a run stops: remove the ones dfprep names."""
    stray = [f"{base}{TEMP_SUFFIX}" for base in (*INDEX_FILES, OWNERSHIP_FILE)]
    stray = [name for name in stray if storage.exists(name)]
    for name in stray:
        storage.delete(name)
    return stray


def finalize(storage: Storage, units: list[WorkUnit], config: PipelineConfig,
             model_checksums: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Rebuild videos.parquet and dataset.json from the committed units (the single source of truth)."""
    committed = valid_commits(storage, config.output_hash())
    if not storage.listdir(ATTEMPTS_DIR):
        storage.remove_dir(ATTEMPTS_DIR)
    rows = [row for unit in units if unit.name in committed for row in committed[unit.name]["videos"]]
    if rows:
        storage.write_table(VIDEOS_TABLE, rows_to_table(rows))
    storage.write_json(DATASET_JSON, {
        "config": config.to_dict(), "config_hash": config.output_hash(), "versions": library_versions(),
        "models": model_checksums, "shards": [u.name for u in units if u.name in committed],
        "complete": all(u.name in committed for u in units),
        "videos": len(rows), "samples": sum(committed[u]["samples"] for u in committed),
    })
    return committed


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """A table over the union of the rows' columns (a failed video may lack optional columns)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return pa.Table.from_pylist([{key: row.get(key) for key in columns} for row in rows])


def library_versions() -> dict[str, str]:
    """Versions stamped into dataset.json so a shard set can be traced to its software."""
    import av
    import dlib
    import numpy

    versions = {"dfprep": __version__, "av": av.__version__, "dlib": dlib.__version__, "opencv": cv2.__version__,
                "numpy": numpy.__version__, "pyarrow": pa.__version__}
    try:
        versions["ray"] = ray_version()
    except ImportError:  # pragma: no cover - ray is a hard dependency, but keep the stamp robust
        pass
    return versions


def report_from(storage: Storage, units: list[WorkUnit], committed: dict[str, dict[str, Any]], note: str,
                skipped: int, removed: list[str], seconds: float) -> RunReport:
    """Aggregate committed unit stats into the run's summary numbers."""
    report = RunReport(storage.display, note, len(units), skipped, removed=removed, seconds=seconds)
    for unit in units:
        stats = committed.get(unit.name)
        if stats is None:
            continue
        report.timings.update(stats.get("timings", {}))
        report.disk_bytes += stats.get("tar_bytes", 0)
        for row in stats["videos"]:
            report.videos += 1
            report.faces += row["faces_written"]
            report.statuses[row["status"]] += 1
            if row["error"]:
                report.reasons[normalised_reason(row["error"])] += 1
    return report


def run_in_process(units: list[WorkUnit], config: PipelineConfig, models: ExtractionModels, storage: Storage,
                   progress: ProgressFn, run_id: str | None = None) -> None:
    """--workers 0: every unit in this process, one after another (debuggable, no Ray), crashes recorded."""
    extractor = VideoExtractor(config, models)
    run_id = run_id or new_run_id()
    with recording_crashes(run_id) as crash_log:
        context = RunContext(run_id, exit_on_hang=False, crash_log=crash_log)
        for unit in units:
            process_unit(unit, extractor, storage, progress, context)


def extract_run(records: Iterable[VideoRecord], config: PipelineConfig, output: str, *, overwrite: bool = False,
                extend: bool = False, quiet: bool = False, filesystem: Any = None) -> RunReport:
    """The whole `dfprep extract`: resolve models, claim and lock the output, run what is not committed."""
    started = time.monotonic()
    check_inline_maps(config)  # a bad zoo checkpoint fails now, not after the extraction
    storage = open_output(output, filesystem)
    records = list(records)
    with output_errors(storage):
        check_separate(storage, input_roots(config), [r.path for r in records])
        check_claimable(storage, OWNERSHIP_FILE, adopt=is_earlier_output)
        models = ExtractionModels.resolve(config)
        with OutputLock(storage, "extract") as lock:
            claim(storage)
            report = _extract_locked(storage, records, config, models, lock.run_id, overwrite, extend, quiet)
            report.maps = inline_maps(config, output, filesystem, quiet)
    report.seconds = time.monotonic() - started
    return report


def _extract_locked(storage: Storage, records: list[VideoRecord], config: PipelineConfig, models: ExtractionModels,
                    run_id: str, overwrite: bool, extend: bool, quiet: bool) -> RunReport:
    """The run proper, under the output's lock: prepare, process what is left, finalize, report."""
    remove_stale_staging()
    prepared = prepare(storage, records, config, overwrite, extend, run_id)
    todo = [u for u in prepared.units if u.name not in prepared.committed]
    progress = Progress(sum(len(u.records) for u in todo), quiet)
    try:
        if todo and worker_count(config) == 0:
            run_in_process(todo, config, models, storage, progress, run_id)
        elif todo:
            run_on_ray(todo, config, models, storage, progress, run_id)
    finally:
        progress.close()
    committed = finalize(storage, prepared.units, config, models.checksums())
    report = report_from(storage, prepared.units, committed, prepared.note, len(prepared.units) - len(todo),
                         prepared.removed, 0.0)
    report.warnings, report.charged = prepared.warnings, prepared.charged
    return report


def inline_maps(config: PipelineConfig, output: str, filesystem: Any, quiet: bool) -> list[str]:
    """`output.maps`: region maps computed in the same command, as companion shards (resumable like maps)."""
    lines = []
    for method in config.output.maps:
        if method == "cam" and not config.cam.zoo:
            lines += cam_next_steps(output, config.cam)  # a recipe cannot ship the zoo: say what to run next
            continue
        map_report = maps_run(output, inline_settings(method, config.cam), workers=worker_count(config),
                              address=config.ray.address, quiet=quiet, filesystem=filesystem)
        lines.append(f"{method} maps: {map_report.maps_total} in {map_report.output}")
    return lines


def run_on_ray(units: list[WorkUnit], config: PipelineConfig, models: ExtractionModels, storage: Storage,
               progress: ProgressFn, run_id: str | None = None) -> None:
    """Units over a pool of stateful Ray actors: bounded in flight, retried, progress per video."""
    counted: set[tuple[str, int]] = set()

    def video_done(message: tuple[str, int, dict[str, Any]]) -> None:
        """Count each video once, even when Ray redid its unit after a worker died."""
        unit_name, position, row = message
        if (unit_name, position) not in counted:
            counted.add((unit_name, position))
            progress(row)

    with ActorPool(ExtractWorker, (config, models), worker_count(config), config) as pool:
        context = RunContext(run_id or new_run_id(), exit_on_hang=True)  # an actor may end itself on a hang
        failures = pool.run(units, (storage, context), video_done)
    if failures:
        first = next(iter(failures.items()))
        raise DfprepError(f"{len(failures)} shard(s) could not be processed after retries (first: {first[0]}: "
                          f"{first[1]}); rerun the same command to complete them")
