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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import pyarrow as pa

from dfprep import __version__
from dfprep.catalog.base import VideoRecord
from dfprep.config import PipelineConfig
from dfprep.errors import normalised_reason
from dfprep.io.layout import (ATTEMPTS_DIR, DATASET_JSON, INDEX_FILES, OWNERSHIP_FILE, PLAN_META, PLAN_TABLE,
                              TEMP_SUFFIX, VIDEOS_TABLE, marker_unit, sample_index_schema, unit_files,
                              videos_schema)
from dfprep.io.ownership import check_claimable, check_separate, claim
from dfprep.io.shards import ShardWriter
from dfprep.io.storage import Storage
from dfprep.jobs.contract import (Announce, Bar, ItemGuard, Needs, Outcome, Plan, Stats, WorkerFactory,
                                  local_needs)
from dfprep.jobs.extract import ExtractionModels, VideoExtractor, VideoResult, base_row
from dfprep.jobs.plan import WorkUnit, catalog_drift, input_roots, load_or_create_plan, units_from_table


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
    return max(1, (cpus or os.cpu_count() or 1) // video_threads)


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

    def __init__(self, storage: Storage, records: list[VideoRecord], config: PipelineConfig, *, overwrite: bool,
                 extend: bool, runtime_versions: dict[str, str]):
        self.output = self.shards = storage
        self.records, self.config, self.ray = records, config, config.ray
        self.overwrite, self.extend, self.runtime_versions = overwrite, extend, runtime_versions
        self.models: ExtractionModels | None = None
        self.hash = config.output_hash()

    def check(self) -> None:
        """Input and output apart, the folder ours (or empty), the models resolved and load-checked."""
        check_separate(self.output, input_roots(self.config), [r.path for r in self.records])
        check_claimable(self.output, OWNERSHIP_FILE, adopt=is_earlier_output)
        self.models = ExtractionModels.resolve(self.config)

    def claim(self) -> list[str]:
        """Mark the folder as dfprep's; --overwrite deletes what the folder's plan says dfprep wrote."""
        claim(self.output)
        return clean_output(self.output) if self.overwrite else []

    def expected_items(self) -> int | None:
        """The catalogued videos: a small folder runs in-process when that finishes sooner than Ray starts."""
        return len(self.records)

    def plan(self, workers: int) -> Plan[WorkUnit]:
        """The persisted plan (or a new one, units sized for the workers), and where the catalog disagrees."""
        units, note = load_or_create_plan(self.output, self.records, self.config, overwrite=self.overwrite,
                                          extend=self.extend, workers=workers)
        root = ", ".join(input_roots(self.config)) or "the input"
        return Plan(units, note, catalog_drift(units, self.records, root))

    def is_committed(self, stats: Stats) -> bool:
        """A marker stamped with this output's config hash (an unstamped one predates stamps and counts)."""
        return stats.get("config_hash", self.hash) == self.hash

    def stale(self, unit: str, stats: Stats, units: dict[str, WorkUnit]) -> str | None:
        """A face shard depends on nothing but its videos and the config (both in its stamp)."""
        return None

    def size(self, unit: WorkUnit) -> int:
        """Videos in the unit."""
        return len(unit.records)

    def cost(self, unit: WorkUnit) -> float:
        """The unit's bytes of video (decoding dominates and grows with them); a file that is gone costs nothing."""
        return float(sum(file_bytes(record.path) for record in unit.records))

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

    def finalize(self, units: list[WorkUnit], committed: dict[str, Stats]) -> None:
        """Rebuild videos.parquet and dataset.json from the committed units."""
        rows = [row for unit in units if unit.name in committed for row in committed[unit.name]["videos"]]
        if rows:
            self.output.write_table(VIDEOS_TABLE, rows_to_table(rows))
        checksums = self.models.checksums() if self.models is not None else {}
        self.output.write_json(DATASET_JSON, {
            "command": command_line(), "config": self.config.to_dict(), "config_hash": self.hash,
            "versions": {**library_versions(), **self.runtime_versions}, "models": checksums,
            "shards": [u.name for u in units if u.name in committed],
            "complete": all(u.name in committed for u in units),
            "videos": len(rows), "samples": sum(committed[u]["samples"] for u in committed),
        })

    def report(self, outcome: Outcome[WorkUnit]) -> RunReport:
        """Aggregate the committed units' stats into the summary numbers."""
        plan = outcome.plan
        note = plan.note + "".join(f"; redoing damaged shard {u} ({r})" for u, r in outcome.redone.items())
        if outcome.backend_note and outcome.done:
            note += f"; {outcome.backend_note}"
        report = RunReport(self.output.display, note, len(plan.units), outcome.skipped, removed=outcome.removed,
                           warnings=plan.warnings, charged=outcome.charged, nodes_lost=outcome.nodes_lost)
        for unit in plan.units:
            stats = outcome.committed.get(unit.name)
            if stats is not None:
                add_unit(report, stats)
        return report


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
        return {unit.name for unit in units_from_table(storage.read_table(PLAN_TABLE))}
    except (OSError, ValueError, KeyError):
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


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """videos.parquet over the contract's schema (optional columns only when some row has them)."""
    schema = videos_schema({key for row in rows for key in row})
    return pa.Table.from_pylist([{key: row.get(key) for key in schema.names} for row in rows], schema=schema)


def library_versions() -> dict[str, str]:
    """Versions stamped into dataset.json so a shard set can be traced to its software (the runner adds Ray's)."""
    import av
    import dlib
    import numpy

    return {"dfprep": __version__, "av": av.__version__, "dlib": dlib.__version__, "opencv": cv2.__version__,
            "numpy": numpy.__version__, "pyarrow": pa.__version__}
