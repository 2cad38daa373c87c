"""The one runner of sharded jobs (dfprep.jobs.contract), and the two commands built on it: extract and maps.

`run_job` owns everything around a job's units: the output's lock; settling an earlier run (observed deaths
charged, damaged or stale commits un-committed, uncommitted leftovers and index temporaries deleted); the
guard around each item (attempt markers, watchdog, fault hook); the progress bar; the backends (in-process,
or a pool of Ray actors with the job's Ray settings: retries, restarts, work in flight); finalize and the
report. A job only plans its units, makes the worker that commits one, and writes its indexes.
"""

from __future__ import annotations

import ctypes
import os
import queue
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Iterable, Iterator, TypeVar

import cv2
import pyarrow as pa

from dfprep import __version__
from dfprep.catalog.base import VideoRecord
from dfprep.config import PipelineConfig
from dfprep.errors import DfprepError
from dfprep.io.integrity import MARKER_CHECK_KEYS, damaged_units, uncommit
from dfprep.io.layout import ATTEMPTS_DIR, TEMP_SUFFIX
from dfprep.io.lock import OutputLock
from dfprep.io.ownership import open_output, output_errors
from dfprep.io.shards import committed_units, remove_stale_staging, remove_uncommitted
from dfprep.io.storage import Storage
from dfprep.jobs.contract import Announce, Outcome, ShardJob, Skip, Stats, Unit, UnitWorker, WorkerFactory
from dfprep.jobs.extract_shards import ExtractJob, RunReport
from dfprep.jobs.maps import MapReport, MapRun, cam_next_steps, inline_settings
from dfprep.runner import faults
from dfprep.runner.backend import choose_backend, on_the_cluster
from dfprep.runner.guard import (ISOLATION, AttemptLog, RunContext, Watchdog, hard_limit, recording_crashes,
                                 settle_interrupted)
from dfprep.runner.maps import check_inline_maps, map_job
from dfprep.runner.pool import ActorPool, cluster_gpus, connect, node_identity, ray_version
from dfprep.runner.progress import Progress

__all__ = ["RunReport", "extract_job", "extract_run", "maps_run", "run_extract", "run_job"]

ReportT = TypeVar("ReportT")
INTERRUPT_WAIT_S = 10.0  # how long an interrupted run waits for its video threads to unwind
PROGRESS_INTERVAL_S = 0.25  # a Ray actor reports a unit's progress at most this often (and when the unit ends)


# ---------------------------------------------------------------- the commands


def extract_run(records: Iterable[VideoRecord] | pa.Table, config: PipelineConfig, output: str, *,
                overwrite: bool = False, extend: bool = False, quiet: bool = False,
                filesystem: Any = None) -> RunReport:
    """The whole `dfprep extract`: the extract job on the runner, then the inline maps (`output.maps`)."""
    started = time.monotonic()
    job = extract_job(records, config, output, overwrite=overwrite, extend=extend, filesystem=filesystem)
    del records  # the job holds the catalog now, and frees it once planned
    return run_extract(job, output, quiet, filesystem, started)


def extract_job(records: Iterable[VideoRecord] | pa.Table, config: PipelineConfig, output: str, *,
                overwrite: bool = False, extend: bool = False, filesystem: Any = None) -> ExtractJob:
    """The extract job on these records; it owns the catalog from here and frees it once planned, so a caller
    that built the catalog drops its own reference (20,000 videos: ~3.4 MB of Arrow held for the whole run)."""
    check_inline_maps(config)  # a bad zoo checkpoint fails now, not after the extraction
    return ExtractJob(open_output(output, filesystem), records, config, overwrite=overwrite, extend=extend,
                      runtime_versions={"ray": ray_version()})


def run_extract(job: ExtractJob, output: str, quiet: bool = False, filesystem: Any = None,
                started: float | None = None) -> RunReport:
    """The extract job on the runner, then the inline maps (`output.maps`); `started`: when the command began."""
    started = time.monotonic() if started is None else started
    report = run_job(job, quiet)
    report.maps = inline_maps(job.config, output, filesystem, quiet, job.videos)
    report.seconds = time.monotonic() - started
    return report


def inline_maps(config: PipelineConfig, output: str, filesystem: Any, quiet: bool, videos: int) -> list[str]:
    """`output.maps`: region maps made in the same command, under the pipeline's own Ray settings; where dfprep
    itself chose to extract in-process (a small input, no --workers), the maps stay in-process too."""
    ray = config.ray if choose_backend(config.ray, videos).workers else replace(config.ray, workers=0)
    lines = []
    for method in config.output.maps:
        if method == "cam" and not config.cam.zoo:
            lines += cam_next_steps(output, config.cam)  # a recipe cannot ship the zoo: say what to run next
            continue
        report = maps_run(output, MapRun(inline_settings(method, config.cam), ray, quiet=quiet), filesystem)
        lines.append(f"{method} maps: {report.maps_total} in {report.output}")
    return lines


def maps_run(output: str, run: MapRun, filesystem: Any = None) -> MapReport:
    """The whole `dfprep maps`: settings checked before any file is touched, then the map job on the runner."""
    started = time.monotonic()
    run = replace(run, settings=run.settings.resolved())  # a bad option fails before any file is touched
    job = map_job(open_output(output, filesystem), run)
    report = run_job(job, run.quiet)
    report.seconds = time.monotonic() - started
    return report


# ---------------------------------------------------------------- the runner


def run_job(job: ShardJob[Any, ReportT], quiet: bool) -> ReportT:
    """Check, lock the output, settle the last run, commit every unit not yet committed, finalize, report."""
    with output_errors(job.output):
        job.check()
        with OutputLock(job.output, job.kind) as lock:
            return _run_locked(job, lock.run_id, quiet)


def _run_locked(job: ShardJob[Any, ReportT], run_id: str, quiet: bool) -> ReportT:
    """The run proper, under the output's lock."""
    remove_stale_staging()
    removed = job.claim()
    charged = settle_attempts(job.shards, run_id) if job.guarded else []
    backend = on_the_cluster(choose_backend(job.ray, job.expected_items()), job.ray)
    threads = backend.threads if job.threads else 1
    plan = job.plan(backend.workers or threads)
    committed, redone, cleaned = settle_shards(job, plan.units)
    todo = costliest_first(job, [unit for unit in plan.units if unit.name not in committed])
    progress = Progress(sum(job.size(unit) for unit in todo), quiet, job.bar)
    nodes_lost: list[str] = []
    try:
        if todo and backend.workers == 0:
            run_in_process(job, todo, run_id, progress, threads)
        elif todo:
            nodes_lost = run_on_ray(job, todo, run_id, progress, backend.workers)
    finally:
        progress.close()
    committed = valid_commits(job)
    if job.guarded and not job.shards.listdir(ATTEMPTS_DIR):
        job.shards.remove_dir(ATTEMPTS_DIR)
    job.finalize(plan.units, committed)
    remove_stale_staging()  # again: a killed run's Ray worker may still have been dying when this run began
    return job.report(Outcome(plan, committed, [u.name for u in todo], removed + cleaned, redone, charged,
                              backend.note, nodes_lost))


def costliest_first(job: ShardJob[Any, Any], units: list[Unit]) -> list[Unit]:
    """Units in dispatch order, costliest first (ties keep plan order): the run ends with small units, so the
    workers finish together (the plan's own order, which names the shards, is unchanged)."""
    costs = {unit.name: job.cost(unit) for unit in units}
    return sorted(units, key=lambda unit: -costs[unit.name])


def settle_attempts(shards: Storage, run_id: str) -> list[str]:
    """Judge every item an earlier run left in progress (a death it observed is charged, an interrupt is not)."""
    shards.makedirs(ATTEMPTS_DIR)
    return settle_interrupted(shards, run_id)


def valid_commits(job: ShardJob[Any, Any]) -> dict[str, Stats]:
    """Commit markers that count for this job (another config's or settings' markers are not commits here)."""
    markers = committed_units(job.shards, keep=MARKER_CHECK_KEYS | job.marker_keys)
    return {unit: stats for unit, stats in markers.items() if job.is_committed(stats)}


def settle_shards(job: ShardJob[Any, Any], units: list[Unit]) -> tuple[dict[str, Stats], dict[str, str], list[str]]:
    """Keep valid commits; un-commit damaged and stale ones; delete uncommitted leftovers and index temporaries.

    Returns (valid commits, unit → why it is redone when damaged, files removed).
    """
    committed = valid_commits(job)
    by_name = {unit.name: unit for unit in units}
    damaged = damaged_units(job.shards, committed)
    stale = {name: job.stale(name, stats, by_name) for name, stats in committed.items() if name not in damaged}
    removed: list[str] = []
    for name in [*damaged, *(name for name, reason in stale.items() if reason)]:
        removed += uncommit(job.shards, name)
        del committed[name]
    removed += remove_uncommitted(job.shards, list(by_name), set(committed))
    removed += remove_temporaries(job.shards, job.temporaries)
    return committed, damaged, removed


def remove_temporaries(shards: Storage, names: Iterable[str]) -> list[str]:
    """Temporary index files are never valid after a run stops: remove the ones the job names."""
    stray = [f"{name}{TEMP_SUFFIX}" for name in names if shards.exists(f"{name}{TEMP_SUFFIX}")]
    for name in stray:
        shards.delete(name)
    return stray


# ---------------------------------------------------------------- one unit under guard, and the two backends


class ItemGuards:
    """The guard around each item of one unit: its attempt marker, its watchdog and the fault hook."""

    def __init__(self, shards: Storage, unit: str, context: RunContext):
        self.shards, self.unit, self.context = shards, unit, context
        self.log: AttemptLog | None = None
        self.placement = {"worker": f"{socket.gethostname()}:{os.getpid()}",
                          "thread": threading.current_thread().name, "node": node_identity(),
                          "dfprep_version": __version__}

    @contextmanager
    def attempt(self, position: int, label: str, timeout_s: float) -> Iterator[Skip | None]:
        """Mark the item in progress under its watchdog (released however it ends), or yield why it is skipped."""
        if self.log is None:
            self.log = AttemptLog(self.shards, self.unit, self.context)
        with ISOLATION.hold(alone=self.log.runs_alone(position)):  # a suspect of a crash runs alone
            skip = self.log.begin(position, timeout_s)
            if skip is not None:
                yield skip
                return
            try:
                with Watchdog(self.log, position, hard_limit(timeout_s), label, self.context.exit_on_hang):
                    faults.reached(self.unit, position)  # reliability tests only ($DFPREP_FAULT); nothing otherwise
                    yield None
            finally:
                self.log.finish(position)

    def clear(self) -> None:
        """After the unit commits its markers are no longer needed."""
        if self.log is not None:
            self.log.clear()


def commit_unit(worker: UnitWorker[Any], unit: Unit, shards: Storage, context: RunContext,
                announce: Announce) -> Stats:
    """One unit → one committed shard, its items guarded; the attempt markers go once it is committed."""
    guards = ItemGuards(shards, unit.name, context)
    stats = worker.run_unit(unit, guards, announce)
    guards.clear()
    return stats


def run_in_process(job: ShardJob[Any, Any], units: list[Unit], run_id: str, progress: Announce,
                   threads: int = 1) -> None:
    """No Ray: `threads` video threads take units from one queue (one thread: one unit after another,
    debuggable); FFmpeg, dlib's HOG and OpenCV release the GIL, so threads share the cores. Crashes are recorded."""
    with recording_crashes(run_id) as crash_log:
        context = RunContext(run_id, exit_on_hang=False, crash_log=crash_log)
        if threads <= 1:
            worker = job.worker(True)()
            for unit in units:
                commit_unit(worker, job.load(unit), job.shards, context, progress)
            return
        VideoThreads(job, context, progress).run(units, threads)


class VideoThreads:
    """In-process worker threads, each with its own worker (its own detectors), sharing a queue of units."""

    def __init__(self, job: ShardJob[Any, Any], context: RunContext, progress: Announce):
        self.job, self.context = job, context
        self.progress = locked(progress)
        self.units: queue.SimpleQueue[Unit] = queue.SimpleQueue()
        self.failures: list[BaseException] = []
        self.stop = threading.Event()  # set by the first failure: the other threads take no further unit
        self.running: set[threading.Thread] = set()  # kept here: an interrupted join() can leave is_alive() wrong
        self.changed = threading.Condition()

    def run(self, units: list[Unit], threads: int) -> None:
        """Commit every unit; the first failure (storage, a bug) is raised here once the threads have stopped."""
        for unit in units:
            self.units.put(unit)
        count = min(threads, len(units))
        pool = [threading.Thread(target=self._serve, args=(count,), name=f"dfprep-video-{n}", daemon=True)
                for n in range(count)]
        with self.changed:
            self.running.update(pool)
        for thread in pool:
            thread.start()
        try:
            with self.changed:
                while self.running:
                    self.changed.wait(0.5)  # in slices: Ctrl-C reaches the main thread at once
        except BaseException:
            self.stop.set()  # interrupted: no thread takes another unit
            self._interrupt()  # and each unwinds its video as one thread would (staging discarded)
            raise
        if self.failures:
            raise self.failures[0]

    def _serve(self, threads: int) -> None:
        """One of `threads` threads: build a worker (its decoder sized by their number), then commit units until
        none is left or another thread failed."""
        try:
            worker = self.job.worker(True, threads)()
            while not self.stop.is_set():
                try:
                    unit = self.units.get_nowait()
                except queue.Empty:
                    return
                commit_unit(worker, self.job.load(unit), self.job.shards, self.context, self.progress)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            self.failures.append(exc)
            self.stop.set()
        finally:
            with self.changed:
                self.running.discard(threading.current_thread())
                self.changed.notify_all()

    def _interrupt(self, wait_s: float = INTERRUPT_WAIT_S) -> None:
        """Raise KeyboardInterrupt in each running thread (at its next Python instruction: a frame's decode or
        a detection finishes first) and give them `wait_s` to unwind; a thread stuck inside C code is left."""
        with self.changed:
            for thread in self.running:
                if thread.ident is not None:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                                               ctypes.py_object(KeyboardInterrupt))
            self.changed.wait_for(lambda: not self.running, wait_s)


def locked(announce: Announce) -> Announce:
    """The progress callback, called from several threads one at a time."""
    lock = threading.Lock()

    def call(unit: str, done: int, faces: int) -> None:
        with lock:
            announce(unit, done, faces)
    return call


class JobActor:
    """Ray actor body for any job: builds the job's worker once (models load once per actor) and commits units."""

    def __init__(self, factory: WorkerFactory, shards: Storage):
        cv2.setNumThreads(1)
        remove_stale_staging()  # a restarted actor (or a killed run) may have left its staging folder
        self.worker, self.shards = factory(), shards

    def run_unit(self, unit: Unit, context: RunContext, queue: Any) -> Stats:
        """Commit one unit; progress goes to the driver as (unit, done, faces) messages on the queue actor."""
        announce = Throttled(lambda name, done, faces: queue.put_nowait.remote((name, done, faces)))
        try:
            return commit_unit(self.worker, unit, self.shards, context, announce)
        finally:
            announce.flush()


class Throttled:
    """A unit's progress, sent at most every PROGRESS_INTERVAL_S: each message carries the unit's running totals,
    so the latest one says all the skipped ones did (a message to the queue actor per tiny clip cost ~1 ms)."""

    def __init__(self, send: Announce, interval_s: float = PROGRESS_INTERVAL_S):
        self.send, self.interval_s = send, interval_s
        self.latest: tuple[str, int, int] | None = None
        self.sent_at = float("-inf")

    def __call__(self, unit: str, done: int, faces: int) -> None:
        self.latest = (unit, done, faces)
        if time.monotonic() - self.sent_at >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        """Send the latest totals if they have not been sent."""
        if self.latest is not None:
            self.send(*self.latest)
            self.latest, self.sent_at = None, time.monotonic()


def run_on_ray(job: ShardJob[Any, Any], units: list[Unit], run_id: str, progress: Announce,
               workers: int) -> list[str]:
    """Units over a pool of `workers` stateful actors under the job's Ray settings: bounded in flight, retried,
    restarted; every node checked first. Returns the nodes lost mid-run (their units were redone on the others)."""
    config = PipelineConfig(ray=job.ray)  # the pool reads only the ray section
    connect(config, workers)
    count, resources = job.actors(workers, cluster_gpus())
    with ActorPool(JobActor, (job.worker(False), job.shards), count, config, resources, job.needs()) as pool:
        context = RunContext(run_id, exit_on_hang=True)  # an actor may end itself on a hang
        failures = pool.run(units, (context,), lambda message: progress(*message), job.load)
    if failures:
        first = next(iter(failures.items()))
        raise DfprepError(f"{len(failures)} shard(s) of {job.shards.root} could not be processed after retries "
                          f"(first: {first[0]}: {first[1]}); rerun the same command to complete them")
    return pool.node_losses()
