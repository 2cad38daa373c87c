"""The extract job: plan video units, commit one face shard per unit, rebuild videos.parquet and dataset.json.

The per-video work is dfprep.jobs.extract.VideoExtractor; this module is what the runner (dfprep.runner.run)
needs to run it as a sharded job (see dfprep.jobs.contract).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import pyarrow as pa
import pyarrow.parquet as pq

from dfprep import __version__
from dfprep.catalog.base import VideoRecord
from dfprep.catalog.table import catalog_table, column_values
from dfprep.config import PipelineConfig
from dfprep.config.machine import usable_cpus
from dfprep.errors import DfprepError, normalised_reason
from dfprep.io.layout import (ATTEMPTS_DIR, DATASET_JSON, INDEX_FILES, OWNERSHIP_FILE, PLAN_META, PLAN_TABLE,
                              STATS_SUFFIX, TEMP_SUFFIX, VIDEOS_TABLE, marker_unit, sample_index_schema, unit_files,
                              videos_schema)
from dfprep.io.ownership import check_claimable, check_separate, claim
from dfprep.io.shards import ShardWriter
from dfprep.io.storage import Storage
from dfprep.jobs.contract import (Announce, Bar, ItemGuard, Needs, Outcome, Plan, Stats, WorkerFactory,
                                  local_needs)
from dfprep.jobs.extract import ExtractionModels, VideoExtractor, VideoResult, base_row
from dfprep.jobs.plan import PlannedUnit, PlanRows, WorkUnit, input_roots, load_or_create_plan, read_plan_table

ROWS_PER_GROUP = 1024  # videos.parquet is written this many rows at a time (a row group each)


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
    nodes_lost: list[str] = field(default_factory=list)  # cluster nodes that died mid-run (their units redone)


def decoder_threads(video_threads: int, cpus: int | None = None) -> int:
    """FFmpeg threads per decoder when `video_threads` videos decode at once in one process: 0 (FFmpeg's choice,
    every core) for one, else each video's share of the cores. More frame threads than cores cost more than
    they give: on 2 cores with 2 video threads, one frame thread each took 28 videos from 12.6 to 12.0–12.3 s
    (7 videos: 1.23–1.28x the decode floor to 1.15–1.18x)."""
    if video_threads <= 1:
        return 0
    return max(1, (cpus or usable_cpus()) // video_threads)


class ExtractUnitWorker:
    """Extracts every video of a unit into one shard and commits it (stamped with the config hash)."""

    def __init__(self, config: PipelineConfig, models: ExtractionModels, storage: Storage, decode_threads: int = 0):
        self.extractor = VideoExtractor(config, models, decode_threads=decode_threads)
        self.storage = storage
        self.schema = sample_index_schema(config.output.registered_original)

    @classmethod
    def on_node(cls, config: PipelineConfig, models: ExtractionModels, storage: Storage,
                decode_threads: int) -> "ExtractUnitWorker":
        """Inside a Ray actor: the driver's models as found on this node (it may keep them at another path)."""
        return cls(config, models.here(), storage, decode_threads)

    def run_unit(self, unit: WorkUnit, guard: ItemGuard, announce: Announce) -> Stats:
        """Each video under its guard, then the commit; the staging is discarded on any error."""
        started = time.monotonic()
        writer = ShardWriter(self.storage, unit.name)
        try:
            rows: list[dict[str, Any]] = []
            timings: Counter[str] = Counter()
            for position, (record, original) in enumerate(zip(unit.records, unit.original_paths)):
                result = self._guarded(record, original, writer, guard, position)
                result.row["shard"] = unit.name if result.row["faces_written"] else ""
                rows.append(result.row)
                timings.update(result.timings)
                announce(unit.name, position + 1, sum(r["faces_written"] for r in rows))
            stats = {"unit": unit.name, "videos": rows, "seconds": round(time.monotonic() - started, 3),
                     **guard.placement,
                     "statuses": dict(Counter(r["status"] for r in rows)), "timings": dict(timings),
                     "faces": sum(r["faces_written"] for r in rows),
                     "config_hash": self.extractor.config.output_hash()}
            return writer.commit(stats, self.schema)
        except BaseException:
            writer.discard()
            raise

    def _guarded(self, record: VideoRecord, original: str | None, writer: ShardWriter, guard: ItemGuard,
                 position: int) -> VideoResult:
        """One video under the runner's guard; a video its earlier attempts rule out becomes its status row."""
        timeout_s = self.extractor.config.sampling.video_timeout_s
        with guard.attempt(position, record.video_id, timeout_s) as skip:
            if skip is not None:
                return VideoResult({**base_row(record), "status": skip[0], "error": skip[1]}, {})
            return self.extractor.extract(record, original, writer.add)


def command_line() -> str | None:
    """How this run was started, for dataset.json: `dfprep extract …` from the command line; None from Python."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    if program.name != "dfprep" and not (program.name == "__main__.py" and program.parent.name == "dfprep"):
        return None
    return shlex.join(["dfprep", *sys.argv[1:]])


class ExtractJob:
    """`dfprep extract` as a sharded job: units of videos → face shards, then videos.parquet and dataset.json."""

    kind = "extract"
    bar = Bar("extract", "video", "faces_per_s", faces=True)
    guarded = True
    threads = True  # each worker thread builds its own detectors (dlib's are not shared between threads)
    temporaries = (*INDEX_FILES, OWNERSHIP_FILE)
    marker_keys = frozenset({"config_hash", "samples"})

    def __init__(self, storage: Storage, records: Iterable[VideoRecord] | pa.Table, config: PipelineConfig, *,
                 overwrite: bool, extend: bool, runtime_versions: dict[str, str]):
        self.output = self.shards = storage
        self.catalog: pa.Table | None = catalog_table(records)  # freed once planned: the plan holds what runs
        self.videos = self.catalog.num_rows
        self.config, self.ray = config, config.ray
        self.overwrite, self.extend, self.runtime_versions = overwrite, extend, runtime_versions
        self.models: ExtractionModels | None = None
        self.hash = config.output_hash()
        self.rows: PlanRows | None = None
        self.totals = RunReport("", "", 0, 0)  # counted by finalize from every committed unit, for the report

    def check(self) -> None:
        """Input and output apart, the folder ours (or empty), the models resolved and load-checked."""
        assert self.catalog is not None, "check() comes before plan()"
        check_separate(self.output, input_roots(self.config), column_values(self.catalog, "path"))
        check_claimable(self.output, OWNERSHIP_FILE, adopt=is_earlier_output)
        self.models = ExtractionModels.resolve(self.config)

    def claim(self) -> list[str]:
        """Mark the folder as dfprep's; --overwrite deletes what the folder's plan says dfprep wrote."""
        claim(self.output)
        return clean_output(self.output) if self.overwrite else []

    def expected_items(self) -> int | None:
        """The catalogued videos: a small folder runs in-process when that finishes sooner than Ray starts."""
        return self.videos

    def plan(self, workers: int) -> Plan[PlannedUnit]:
        """The persisted plan (or a new one, units sized for the workers), and where the catalog disagrees."""
        assert self.catalog is not None, "plan() runs once"
        self.rows, note = load_or_create_plan(self.output, self.catalog, self.config, overwrite=self.overwrite,
                                              extend=self.extend, workers=workers)
        self.catalog = None
        pa.default_memory_pool().release_unused()  # planning's sorts and copies go back to the system, not kept
        return Plan(self.rows.units, note, self.rows.warnings)

    def is_committed(self, stats: Stats) -> bool:
        """A marker stamped with this output's config hash (an unstamped one predates stamps and counts)."""
        return stats.get("config_hash", self.hash) == self.hash

    def stale(self, unit: str, stats: Stats, units: dict[str, PlannedUnit]) -> str | None:
        """A face shard depends on nothing but its videos and the config (both in its stamp)."""
        return None

    def size(self, unit: PlannedUnit) -> int:
        """Videos in the unit."""
        return unit.videos

    def cost(self, unit: PlannedUnit) -> float:
        """The unit's bytes of video (decoding dominates and grows with them); a file that is gone costs nothing."""
        assert self.rows is not None, "plan() comes first"
        return float(sum(file_bytes(path) for path in self.rows.paths(unit)))

    def load(self, unit: PlannedUnit) -> WorkUnit:
        """The unit's records, built from the plan's rows as it is handed out."""
        assert self.rows is not None, "plan() comes first"
        return self.rows.load(unit)

    def worker(self, in_process: bool, threads: int = 1) -> WorkerFactory:
        """In-process each video thread's decoder takes its share of the cores; a Ray actor takes
        `ray.decode_threads`."""
        assert self.models is not None, "check() resolves the models first"
        if in_process:
            return partial(ExtractUnitWorker, self.config, self.models, self.shards, decoder_threads(threads))
        return partial(ExtractUnitWorker.on_node, self.config, self.models, self.shards,
                       self.config.ray.decode_threads)

    def actors(self, workers: int, gpus: float) -> tuple[int, dict[str, Any] | None]:
        """One CPU actor per worker."""
        return workers, None

    def needs(self) -> Needs:
        """Every node reads the inputs, writes a local output folder and loads the driver's models."""
        assert self.models is not None, "check() resolves the models first"
        return local_needs(input_roots(self.config), [self.output], self.models.present())

    def finalize(self, units: list[PlannedUnit], committed: dict[str, Stats]) -> None:
        """Rebuild videos.parquet and dataset.json from the committed units, reading their markers one at a time
        (twice: the columns and the totals, then the rows), so no run holds every video's row at once."""
        names = [unit.name for unit in units if unit.name in committed]
        self.totals, columns = RunReport("", "", 0, 0), set()
        for stats in self._markers(names):
            add_unit(self.totals, stats)
            columns.update(key for row in stats["videos"] for key in row)
        if self.totals.videos:
            with self.output.writing(VIDEOS_TABLE) as sink:
                videos_parquet(sink, self._markers(names), videos_schema(columns))
        checksums = self.models.checksums() if self.models is not None else {}
        self.output.write_json(DATASET_JSON, {
            "command": command_line(), "config": self.config.to_dict(), "config_hash": self.hash,
            "versions": {**library_versions(), **self.runtime_versions}, "models": checksums,
            "shards": [u.name for u in units if u.name in committed],
            "complete": all(u.name in committed for u in units),
            "videos": self.totals.videos, "samples": sum(committed[u]["samples"] for u in committed),
        })

    def _markers(self, names: list[str]) -> Iterator[Stats]:
        """The units' commit markers in full, read one at a time."""
        for name in names:
            stats = self.shards.read_marker(f"{name}{STATS_SUFFIX}")
            if stats is None:
                raise DfprepError(f"{self.shards.path(name + STATS_SUFFIX)} became unreadable while this run "
                                  "finalized: rerun the same command")
            yield stats

    def report(self, outcome: Outcome[PlannedUnit]) -> RunReport:
        """The summary numbers: finalize's totals over the committed units, and what this run did."""
        plan = outcome.plan
        note = plan.note + "".join(f"; redoing damaged shard {u} ({r})" for u, r in outcome.redone.items())
        if outcome.backend_note and outcome.done:
            note += f"; {outcome.backend_note}"
        return replace(self.totals, output=self.output.display, note=note, units_total=len(plan.units),
                       units_skipped=outcome.skipped, removed=outcome.removed, warnings=plan.warnings,
                       charged=outcome.charged, nodes_lost=outcome.nodes_lost)


def add_unit(report: RunReport, stats: Stats) -> None:
    """Count one committed unit into the report."""
    report.timings.update(stats.get("timings", {}))
    report.disk_bytes += stats.get("tar_bytes", 0)
    for row in stats["videos"]:
        report.videos += 1
        report.faces += row["faces_written"]
        report.statuses[row["status"]] += 1
        if row["error"]:
            report.reasons[normalised_reason(row["error"])] += 1


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
        return set(read_plan_table(storage).column("unit").unique().to_pylist())
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return set()


def is_earlier_output(storage: Storage) -> bool:
    """A folder written by a dfprep that predates the ownership file: its plan says so."""
    meta = storage.read_marker(PLAN_META) if storage.exists(PLAN_TABLE) else None
    return meta is not None and "config_hash" in meta


def file_bytes(path: str) -> int:
    """A file's size, 0 when it cannot be read (a missing video still gets its row, at no cost)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> pa.Table:
    """Video rows over the contract's schema (by default optional columns only when some row has them)."""
    if schema is None:
        schema = videos_schema({key for row in rows for key in row})
    return pa.Table.from_pydict({key: [row.get(key) for row in rows] for key in schema.names}, schema=schema)


def videos_parquet(sink: pa.NativeFile, markers: Iterable[Stats], schema: pa.Schema) -> None:
    """videos.parquet from the units' markers into `sink`, ROWS_PER_GROUP rows at a time (memory flat in the
    videos: neither the rows nor the file are ever held whole)."""
    with pq.ParquetWriter(sink, schema) as writer:
        pending: list[dict[str, Any]] = []
        for stats in markers:
            pending += stats["videos"]
            if len(pending) >= ROWS_PER_GROUP:
                writer.write_table(rows_to_table(pending, schema))
                pending = []
        if pending:
            writer.write_table(rows_to_table(pending, schema))


def library_versions() -> dict[str, str]:
    """Versions stamped into dataset.json so a shard set can be traced to its software (the runner adds Ray's)."""
    import av
    import dlib
    import numpy

    return {"dfprep": __version__, "av": av.__version__, "dlib": dlib.__version__, "opencv": cv2.__version__,
            "numpy": numpy.__version__, "pyarrow": pa.__version__}
